//! Small virtual bdevs, each over one base bdev, reached through bdev-core's consumer API:
//!
//! - [`passthru`]: forwards every I/O unchanged (SPDK's `bdev_passthru`); the commented
//!   template for writing a virtual bdev;
//! - [`error`]: fails or corrupts chosen I/O types N times (SPDK's `bdev_error`), for
//!   testing what sits above;
//! - [`delay`]: adds average and p99 latencies to reads and writes (SPDK's `bdev_delay`).
//!
//! Each has a serde `Opts` with SPDK's parameter names, `create` and `delete`; [`register`]
//! adds the three modules and their methods to an application. They are built from
//! bdev-core's virtual-bdev kit (`bdev_core::vbdev`).

pub mod delay;
pub mod error;
pub mod passthru;

use std::sync::Arc;

use bdev_core::bdev::Bdev;
use bdev_core::config::{Methods, parse_params};
use bdev_core::module::BdevModule;
use serde_json::Value;

/// What can go wrong creating, changing or deleting these bdevs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Options out of range.
    #[error("{0}")]
    InvalidOpts(String),
    /// A bdev of this name is already configured.
    #[error("bdev {0} already exists")]
    Exists(String),
    /// No bdev of this module has that name.
    #[error("bdev {name} not found among {module} bdevs")]
    NotFound {
        /// The name given.
        name: String,
        /// The module asked.
        module: &'static str,
    },
    /// The bdev layer refused (base missing or claimed, duplicate name, no thread...).
    #[error(transparent)]
    Core(#[from] bdev_core::Error),
}

impl From<Error> for bdev_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(c) => c,
            Error::NotFound { name, .. } => bdev_core::Error::NoSuchBdev { name },
            Error::Exists(name) => bdev_core::Error::BdevExists { name },
            // SPDK answers refused options with -EINVAL and its message.
            Error::InvalidOpts(m) => bdev_core::Error::Rpc {
                code: -22,
                message: m,
            },
        }
    }
}

/// The `{"name": ...}` params of the delete methods.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
}

/// The passthru module.
#[derive(Debug, Default)]
pub struct PassthruModule;

impl BdevModule for PassthruModule {
    fn name(&self) -> &'static str {
        passthru::MODULE
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("bdev_passthru_create", |p| {
            let o: passthru::PassthruOpts = parse_params("bdev_passthru_create", p)?;
            Ok(Value::String(passthru::create(o)?))
        });
        m.register("bdev_passthru_delete", |p| {
            Box::pin(async move {
                let d: DeleteParams = parse_params("bdev_passthru_delete", p)?;
                passthru::delete(&d.name).await?;
                Ok(Value::Bool(true))
            })
        });
    }

    fn examine(&self, bdev: &Bdev) {
        passthru::examine(bdev);
    }
}

/// Adds the passthru, error and delay modules to the current application and their
/// methods to `m`.
pub fn register(m: &mut Methods) -> bdev_core::Result<()> {
    m.add_module(Arc::new(PassthruModule))?;
    m.add_module(Arc::new(error::ErrorModule))?;
    m.add_module(Arc::new(delay::DelayModule))
}

#[cfg(test)]
mod tests;

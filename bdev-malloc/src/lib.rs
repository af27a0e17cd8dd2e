//! Two base bdevs that need no device:
//!
//! - [`malloc`]: a RAM disk (SPDK's `bdev_malloc`), its blocks in prefaulted memory; reads
//!   and writes are copies, unmap and write_zeroes zero-fill, flush and reset are no-ops.
//! - [`null`]: a bdev that stores nothing (SPDK's `bdev_null`): reads leave the buffer
//!   untouched, writes are dropped; every I/O completes from a per-thread poller.
//!
//! Each has a serde `Opts` with SPDK's parameter names, `create(opts)` and `delete(name)`,
//! and [`register`] adds the two modules ([`MallocModule`], [`NullModule`]) to an
//! application, with `bdev_malloc_create/delete` and `bdev_null_create/delete`.

pub mod malloc;
pub mod null;

use bdev_core::bdev::{Bdev, get_by_name};
use std::sync::Arc;

use bdev_core::config::{Methods, parse_params};
use bdev_core::module::BdevModule;
use serde_json::Value;

/// What can go wrong creating or deleting these bdevs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Options out of range; the message is SPDK's.
    #[error("{0}")]
    InvalidOpts(String),
    /// No bdev of this module has that name.
    #[error("bdev {name} not found among {module} bdevs")]
    NotFound {
        /// The name given.
        name: String,
        /// The module asked.
        module: &'static str,
    },
    /// The bdev layer refused (duplicate name, out of memory, no thread...).
    #[error(transparent)]
    Core(#[from] bdev_core::Error),
}

impl Error {
    /// The negative errno SPDK returns for the same condition.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidOpts(_) => -22,
            Error::NotFound { .. } => -19,
            Error::Core(e) => e.errno(),
        }
    }
}

impl From<Error> for bdev_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(c) => c,
            Error::NotFound { name, .. } => bdev_core::Error::NoSuchBdev { name },
            // SPDK answers a create's refused options with -EINVAL and its message.
            Error::InvalidOpts(m) => bdev_core::Error::Rpc {
                code: -22,
                message: m,
            },
        }
    }
}

/// Looks up a bdev registered by `module`.
fn find(name: &str, module: &'static str) -> Result<Bdev, Error> {
    match get_by_name(name) {
        Some(b) if b.module_name() == module => Ok(b),
        _ => Err(Error::NotFound {
            name: name.to_string(),
            module,
        }),
    }
}

/// The `{"name": ...}` params of the delete methods.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
}

/// The malloc module (`bdev_malloc_create`, `bdev_malloc_delete`).
#[derive(Debug, Default)]
pub struct MallocModule;

impl BdevModule for MallocModule {
    fn name(&self) -> &'static str {
        "malloc"
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("bdev_malloc_create", |p| {
            let opts: malloc::MallocOpts = parse_params("bdev_malloc_create", p)?;
            let b = malloc::create(opts)?;
            Ok(Value::String(b.name().to_string()))
        });
        m.register("bdev_malloc_delete", |p| {
            Box::pin(async move {
                let d: DeleteParams = parse_params("bdev_malloc_delete", p)?;
                malloc::delete(&d.name).await?;
                Ok(Value::Bool(true))
            })
        });
    }
}

/// The null module (`bdev_null_create`, `bdev_null_delete`).
#[derive(Debug, Default)]
pub struct NullModule;

impl BdevModule for NullModule {
    fn name(&self) -> &'static str {
        "null"
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("bdev_null_create", |p| {
            let opts: null::NullOpts = parse_params("bdev_null_create", p)?;
            let b = null::create(opts)?;
            Ok(Value::String(b.name().to_string()))
        });
        m.register_sync("bdev_null_resize", |p| {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                name: String,
                new_size: u64,
            }
            let p: P = parse_params("bdev_null_resize", p)?;
            null::resize(&p.name, p.new_size)?;
            Ok(Value::Bool(true))
        });
        m.register("bdev_null_delete", |p| {
            Box::pin(async move {
                let d: DeleteParams = parse_params("bdev_null_delete", p)?;
                null::delete(&d.name).await?;
                Ok(Value::Bool(true))
            })
        });
    }
}

/// Adds both modules of this crate to the current application and their methods to `m`.
pub fn register(m: &mut Methods) -> bdev_core::Result<()> {
    m.add_module(Arc::new(MallocModule))?;
    m.add_module(Arc::new(NullModule))
}

/// Checks the metadata/DIF options neither bdev supports yet: they must be off.
fn check_no_metadata(md_size: u32, dif_type: u32) -> Result<(), Error> {
    if ![0, 8, 16, 32, 64, 128].contains(&md_size) {
        return Err(Error::InvalidOpts(format!(
            "metadata size {md_size} is not supported"
        )));
    }
    if md_size != 0 || dif_type != 0 {
        return Err(Error::InvalidOpts(
            "metadata and DIF (md_size, dif_type) are not supported yet; leave them 0".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! Small virtual bdevs, each over one base bdev, reached through bdev-core's consumer API:
//!
//! - [`passthru`]: forwards every I/O unchanged (SPDK's `bdev_passthru`); the commented
//!   template for writing a virtual bdev;
//! - [`error`]: fails or corrupts chosen I/O types N times (SPDK's `bdev_error`), for
//!   testing what sits above;
//! - [`delay`]: adds average and p99 latencies to reads and writes (SPDK's `bdev_delay`).
//!
//! Each has a serde `Opts` with SPDK's parameter names, `create` and `delete`; [`register`]
//! adds the three modules and their methods to an application.

pub mod delay;
pub mod error;
pub mod passthru;

use std::sync::{Arc, Mutex};

use bdev_core::bdev::{Bdev, BdevChannel, BdevEvent, BdevProps, Desc, get_by_name};
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
            Error::InvalidOpts(m) => bdev_core::Error::invalid("params", m),
        }
    }
}

/// The `{"name": ...}` params of the delete methods.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
}

/// A configured virtual bdev, as its module remembers it.
pub trait VbdevConfig: Clone + Send + Sync + 'static {
    /// The virtual bdev's name.
    fn name(&self) -> String;
    /// Its base bdev's name.
    fn base_name(&self) -> &str;
}

/// One module's configured bdevs in one application, built or waiting for their base.
/// Lives in [`bdev_core::module::app_data`], never in a process global.
pub struct Configs<C>(Mutex<Vec<C>>);

impl<C> Default for Configs<C> {
    fn default() -> Self {
        Configs(Mutex::new(Vec::new()))
    }
}

impl<C: VbdevConfig> Configs<C> {
    /// The current application's.
    pub fn get() -> Result<Arc<Self>, Error> {
        bdev_core::module::app_data::<Self>().ok_or(Error::Core(bdev_core::Error::NoThread {
            op: "virtual bdev config",
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<C>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every config, in creation order.
    pub fn all(&self) -> Vec<C> {
        self.lock().clone()
    }

    /// Forgets `name`'s config; whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        let mut l = self.lock();
        let n = l.len();
        l.retain(|c| c.name() != name);
        l.len() != n
    }

    /// Records `c`, builds it now if its base exists (else at the base's examine), and
    /// returns its name. A build that fails forgets the config (SPDK keeps it, so that a
    /// corrected retry then fails with "exists"; we would rather it succeeded).
    pub fn create(
        &self,
        c: C,
        build: impl FnOnce(&C, &Bdev) -> Result<Bdev, Error>,
    ) -> Result<String, Error> {
        let name = c.name();
        if name.is_empty() {
            return Err(Error::InvalidOpts("bdev name must not be empty".into()));
        }
        {
            let mut l = self.lock();
            if l.iter().any(|x| x.name() == name) || get_by_name(&name).is_some() {
                return Err(Error::Exists(name));
            }
            l.push(c.clone());
        }
        match get_by_name(c.base_name()) {
            Some(base) => {
                if let Err(e) = build(&c, &base) {
                    self.remove(&name);
                    return Err(e);
                }
            }
            None => tracing::info!(
                bdev = %name,
                base = %c.base_name(),
                "vbdev creation deferred pending base bdev arrival"
            ),
        }
        Ok(name)
    }

    /// The examine hook: builds every config waiting for `base`.
    pub fn examine(&self, base: &Bdev, build: impl Fn(&C, &Bdev) -> Result<Bdev, Error>) {
        let waiting: Vec<C> = self
            .lock()
            .iter()
            .filter(|c| {
                c.base_name() == base.name() || base.aliases().iter().any(|a| a == c.base_name())
            })
            .filter(|c| get_by_name(&c.name()).is_none())
            .cloned()
            .collect();
        for c in waiting {
            if let Err(e) = build(&c, base) {
                tracing::error!(bdev = %c.name(), base = %base.name(), "could not create virtual bdev: {e}");
            }
        }
    }

    /// Forgets `name`'s config and unregisters the bdev, if built; returns once it is gone.
    pub async fn delete(&self, name: &str, module: &'static str) -> Result<(), Error> {
        let had_config = self.remove(name);
        match get_by_name(name).filter(|b| b.module_name() == module) {
            Some(b) => Ok(b.unregister_async().await?),
            None if had_config => Ok(()),
            None => Err(Error::NotFound {
                name: name.to_string(),
                module,
            }),
        }
    }
}

/// Opens `base` and takes the exclusive-write claim for `module`; when the base goes
/// away, the bdev `name` of `module` is unregistered (the event runs on this thread).
pub fn open_base(base: &Bdev, module: &'static str, name: &str) -> Result<Desc, Error> {
    let me = name.to_string();
    let desc = Desc::open(base.name(), false, move |ev| {
        if ev == BdevEvent::Remove {
            if let Some(b) = get_by_name(&me).filter(|b| b.module_name() == module) {
                b.unregister(move |r| {
                    if let Err(e) = r {
                        tracing::warn!("{module} bdev: unregister after base removal: {e}");
                    }
                });
            }
        }
    })?;
    desc.claim(module)?;
    Ok(desc)
}

/// Properties of a bdev that looks like `base`: same geometry, alignment and limits.
pub fn props_like(base: &Bdev, name: &str, product: &str, uuid: Option<uuid::Uuid>) -> BdevProps {
    let bp = base.props();
    let mut p = BdevProps::new(name, base.block_len(), base.num_blocks())
        .product_name(product)
        .uuid(uuid)
        .phys_block_len(bp.phys_block_len);
    p.buf_align = bp.buf_align;
    p.optimal_io_boundary = bp.optimal_io_boundary;
    p.split_on_optimal_io_boundary = bp.split_on_optimal_io_boundary;
    p.write_unit_size = bp.write_unit_size;
    p.max_segment_size = bp.max_segment_size;
    p.max_num_segments = bp.max_num_segments;
    p.max_rw_size = bp.max_rw_size;
    p.write_cache = bp.write_cache;
    p
}

/// The base descriptor a virtual bdev holds until its destruct, and this thread's channel
/// to the base (what each of its channels needs).
pub struct BaseLink(Mutex<Option<Arc<Desc>>>);

impl BaseLink {
    /// Holds `desc` (claimed) until [`BaseLink::close`].
    pub fn new(desc: Desc) -> Self {
        BaseLink(Mutex::new(Some(Arc::new(desc))))
    }

    /// The descriptor and a channel to the base on the current thread.
    pub fn channel(&self, name: &str) -> bdev_core::Result<(Arc<Desc>, BdevChannel)> {
        let desc = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| bdev_core::Error::BdevRemoving {
                name: name.to_string(),
            })?;
        let ch = desc.get_io_channel()?;
        Ok((desc, ch))
    }

    /// Lets go of the base (at destruct: no channel is left).
    pub fn close(&self) {
        drop(self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
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

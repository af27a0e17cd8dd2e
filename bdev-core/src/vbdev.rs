//! The parts every virtual bdev over one base is built from (the module-author tier, as
//! passthru, error, delay and crypto use them): the module's configured bdevs waiting for
//! their base ([`Configs`]), opening and claiming the base ([`open_base`]), properties like
//! the base's ([`props_like`]), the claimed descriptor held until destruct ([`BaseLink`]).

use std::sync::{Arc, Mutex};

use crate::bdev::{Bdev, BdevChannel, BdevEvent, BdevProps, Desc, get_by_name};
use crate::error::{Error, Result};

/// A configured virtual bdev, as its module remembers it.
pub trait VbdevConfig: Clone + Send + Sync + 'static {
    /// The virtual bdev's name.
    fn name(&self) -> String;
    /// Its base bdev's name.
    fn base_name(&self) -> &str;
}

/// One module's configured bdevs in one application, built or waiting for their base.
/// Lives in [`crate::module::app_data`], never in a process global.
pub struct Configs<C>(Mutex<Vec<C>>);

impl<C> Default for Configs<C> {
    fn default() -> Self {
        Configs(Mutex::new(Vec::new()))
    }
}

impl<C: VbdevConfig> Configs<C> {
    /// The current application's.
    pub fn get() -> Result<Arc<Self>> {
        crate::module::app_data::<Self>().ok_or(Error::NoThread {
            op: "virtual bdev config",
        })
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
    pub fn create<E: From<Error>>(
        &self,
        c: C,
        build: impl FnOnce(&C, &Bdev) -> Result<Bdev, E>,
    ) -> Result<String, E> {
        let name = c.name();
        if name.is_empty() {
            return Err(Error::invalid("name", "bdev name must not be empty").into());
        }
        {
            let mut l = self.lock();
            if l.iter().any(|x| x.name() == name) || get_by_name(&name).is_some() {
                return Err(Error::BdevExists { name }.into());
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
    pub fn examine<E: std::fmt::Display>(
        &self,
        base: &Bdev,
        build: impl Fn(&C, &Bdev) -> Result<Bdev, E>,
    ) {
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
    pub async fn delete(&self, name: &str, module: &'static str) -> Result<()> {
        let had_config = self.remove(name);
        match get_by_name(name).filter(|b| b.module_name() == module) {
            Some(b) => b.unregister_async().await,
            None if had_config => Ok(()),
            None => Err(Error::NoSuchBdev {
                name: name.to_string(),
            }),
        }
    }
}

/// Opens `base` and takes the exclusive-write claim for `module`; when the base goes
/// away, the bdev `name` of `module` is unregistered (the event runs on this thread).
pub fn open_base(base: &Bdev, module: &'static str, name: &str) -> Result<Desc> {
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
    p.max_write_zeroes = bp.max_write_zeroes;
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
    pub fn channel(&self, name: &str) -> Result<(Arc<Desc>, BdevChannel)> {
        let desc = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::BdevRemoving {
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

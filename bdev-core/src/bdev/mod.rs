//! The bdev model: block devices registered by modules, opened by consumers, driven
//! through per-thread channels.
//!
//! Three tiers, as SPDK has:
//! - consumers: [`Desc::open`] a bdev by name, [`Desc::get_io_channel`] on each thread,
//!   then `desc.read_blocks(&ch, buf, lba, n)` and friends, which build an [`IoRequest`]
//!   to `.submit(callback)`, `.await`, or push into an [`IoSet`] (one task taking many
//!   I/Os' completions);
//! - module authors: implement [`BdevOps`], describe the bdev with [`BdevProps`],
//!   [`register`] it, complete each [`BdevIo`] they are handed;
//! - everything else is private to the crate.
//!
//! ```text
//!  desc.read_blocks(&ch, buf, lba, n).submit(cb)
//!     │ validate (range, permissions, buffer size and alignment) ── refused ─► cb(Rejected) deferred
//!     │ I/O context from this thread's cache (bounded pool) ── none ─► io_wait queue, retried on free
//!     ▼
//!  BdevOps::submit_request(module channel, BdevIo) ... BdevIo::complete(status)
//!     │ inside a submission? ─► deferred to the thread's next deferred-call pass
//!     ▼
//!  context back to the cache, cb(Completion{status, buf}) on the submitting thread
//! ```
//!
//! Invariants: submit and complete take no lock and allocate nothing in steady state (the
//! callback is stored inline, up to [`crate::thread::DEFER_INLINE`] bytes of captures); a
//! completion runs on the thread that submitted; every submitted I/O completes exactly
//! once, whatever goes wrong (a module that drops a [`BdevIo`] completes it as failed).

mod channel;
mod desc;
mod histogram;
mod io;
mod ioset;
mod ops;
mod props;
mod qos;
mod queue;
mod registry;
mod request;
mod reset;
mod service;
mod stats;
mod timeout;
mod types;

pub use channel::BdevChannel;
pub use desc::Desc;
pub use histogram::{BUCKET_SHIFT as HISTOGRAM_BUCKET_SHIFT, Histogram};
pub use io::{BdevIo, SharedIo};
pub use ioset::{IoSet, Next as IoSetNext};
pub(crate) use ops::Pass;
pub use ops::{BdevOps, DestructDone, MirrorSet, PassThrough, StripeMember};
pub use props::BdevProps;
pub use qos::QosLimits;
pub use queue::IoQueue;
pub use registry::{Bdev, get_by_name, list, register};
pub use request::{IoFuture, IoRequest};
pub use stats::IoStats;
pub use stats::ResetMode;
pub use timeout::TimedOutIo;
pub use types::{BdevEvent, Completion, IoError, IoPayload, IoStatus, IoType, Payload, Reject};

use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// Options of the bdev layer, with SPDK's names and defaults (`bdev_set_options`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BdevOpts {
    /// I/O contexts in the whole application.
    pub bdev_io_pool_size: u32,
    /// I/O contexts each thread keeps for itself.
    pub bdev_io_cache_size: u32,
    /// Whether new bdevs are offered to every module's examine.
    pub bdev_auto_examine: bool,
    /// Per-thread small data buffer cache (accepted for compatibility).
    pub iobuf_small_cache_size: u32,
    /// Per-thread large data buffer cache (accepted for compatibility).
    pub iobuf_large_cache_size: u32,
}

impl Default for BdevOpts {
    fn default() -> Self {
        BdevOpts {
            bdev_io_pool_size: 64 * 1024 - 1,
            bdev_io_cache_size: 256,
            bdev_auto_examine: true,
            iobuf_small_cache_size: 128,
            iobuf_large_cache_size: 16,
        }
    }
}

impl BdevOpts {
    /// Checks the options, as `spdk_bdev_set_opts`.
    pub fn validate(&self) -> Result<()> {
        if self.bdev_io_cache_size == 0 {
            return Err(Error::invalid("bdev_io_cache_size", "must be at least 1"));
        }
        if (self.bdev_io_pool_size as u64) < self.bdev_io_cache_size as u64 * 2 {
            return Err(Error::invalid(
                "bdev_io_pool_size",
                format!(
                    "Pool size {} too small for cache size {} (at least {} needed)",
                    self.bdev_io_pool_size,
                    self.bdev_io_cache_size,
                    self.bdev_io_cache_size * 2
                ),
            ));
        }
        Ok(())
    }
}

/// The I/O context budget shared by a runtime's threads: the bound of the pool.
pub(crate) struct Budget {
    remaining: AtomicIsize,
}

impl Budget {
    /// Takes up to `n` contexts' worth; returns how many were taken.
    pub(crate) fn take(&self, n: usize) -> usize {
        let mut cur = self.remaining.load(Ordering::Relaxed);
        loop {
            let t = (cur.max(0) as usize).min(n);
            if t == 0 {
                return 0;
            }
            match self.remaining.compare_exchange_weak(
                cur,
                cur - t as isize,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return t,
                Err(v) => cur = v,
            }
        }
    }

    pub(crate) fn give(&self, n: usize) {
        self.remaining.fetch_add(n as isize, Ordering::AcqRel);
    }

    pub(crate) fn exhausted(&self) -> bool {
        self.remaining.load(Ordering::Relaxed) <= 0
    }
}

/// A runtime's bdev layer state.
pub(crate) struct Globals {
    pub(crate) opts: BdevOpts,
    pub(crate) budget: Arc<Budget>,
    pub(crate) registry: Mutex<registry::Registry>,
    pub(crate) modules: crate::module::Modules,
    /// The zero buffer write_zeroes emulation writes from (allocated on first use).
    pub(crate) zero_buf: std::sync::OnceLock<Option<Arc<crate::dma::DmaBuf>>>,
    /// With `bdev_auto_examine` off: the names `bdev_examine` allowed, in call order.
    pub(crate) examine_allow: Mutex<Vec<String>>,
}

impl Globals {
    pub(crate) fn new(opts: BdevOpts) -> Self {
        Globals {
            budget: Arc::new(Budget {
                remaining: AtomicIsize::new(opts.bdev_io_pool_size as isize),
            }),
            opts,
            registry: Mutex::new(registry::Registry::default()),
            modules: Default::default(),
            zero_buf: std::sync::OnceLock::new(),
            examine_allow: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, registry::Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long the application's stop waits for bdevs others are removing.
const FINI_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Unregisters every bdev of the runtime (at application stop): unclaimed ones first,
/// newest first, as SPDK's bdev subsystem fini does.
pub(crate) async fn fini(rt: &Arc<Runtime>) {
    loop {
        let next = {
            let reg = rt.bdev.registry();
            let pick = reg
                .list
                .iter()
                .rev()
                .find(|b| !b.is_removing() && b.claim_module().is_none());
            pick.or_else(|| reg.list.iter().rev().find(|b| !b.is_removing()))
                .cloned()
        };
        let Some(b) = next else { break };
        let name = b.props.name.clone();
        if let Err(e) = Bdev(b).unregister_async().await {
            tracing::warn!(bdev = %name, "unregister at shutdown: {e}");
        }
    }
    // Bdevs already being removed by someone else (a delete RPC, a base's removal): wait
    // for them to go, up to 5 s (a loop count of yields was a few tens of ms, too short
    // for a removal that waits on its openers to drain).
    let t0 = std::time::Instant::now();
    while !rt.bdev.registry().list.is_empty() && t0.elapsed() < FINI_WAIT {
        if crate::thread::sleep_us(1000).await.is_err() {
            break;
        }
    }
    for m in rt.bdev.modules.take_all().iter().rev() {
        m.fini();
    }
}

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;

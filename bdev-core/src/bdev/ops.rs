//! The module-author tier: what a bdev implements ([`BdevOps`]) and how the layer calls it
//! without knowing its concrete type.

use std::sync::Arc;

use super::io::BdevIo;
use super::{Bdev, BdevChannel, Desc, IoType};
use crate::error::Result;

/// What a bdev module implements for each bdev it registers (SPDK's
/// `spdk_bdev_fn_table`). The object is shared by every thread; per-thread state goes in
/// the [`BdevOps::Channel`], created on each thread that does I/O.
pub trait BdevOps: Send + Sync + 'static {
    /// Per-thread channel state (queue pairs, engines, completion lists...).
    type Channel: 'static;

    /// Name of the module ("malloc", "null", ...).
    fn module_name(&self) -> &'static str;

    /// Creates this thread's channel (runs on the thread, which may register pollers).
    fn create_channel(&self) -> Result<Self::Channel>;

    /// Starts an I/O. The module owns `io` until it calls [`BdevIo::complete`]; it may do
    /// so before returning (the layer then defers the caller's callback).
    fn submit_request(&self, ch: &Self::Channel, io: BdevIo);

    /// For a bdev that passes every I/O through to one base unchanged (same range, the
    /// base's status: what [`BdevIo::forward_and_complete`] does), that base's descriptor
    /// and this channel's channel to it. Asked once per channel, on its thread.
    ///
    /// The layer then takes the I/O down itself: no call to [`BdevOps::submit_request`]
    /// and no reference counted per I/O (the base channel is reached through this
    /// channel, which the I/O holds), the cheapest level there is. Statistics, histograms
    /// and outstanding counts are kept at both levels as for any forward. What can't go
    /// that way still comes to `submit_request`, which must forward it the same way: a
    /// base of another block size, a base that is frozen or has QoS or timeouts, an I/O
    /// the base needs split or bounced, a reset, a piece of a split I/O, an I/O refused by
    /// the base.
    fn pass_through(&self, _ch: &Self::Channel) -> Option<(Arc<Desc>, BdevChannel)> {
        None
    }

    /// Whether the bdev handles `io_type`. Asked once per type at registration.
    fn io_type_supported(&self, io_type: IoType) -> bool;

    /// The bdev is being unregistered (called once, on the unregistering thread, before
    /// openers hear of it): a module holding I/O indefinitely (a pending injection, a
    /// queue waiting on something that won't come) completes it now, so that openers can
    /// drain and close.
    fn unregistering(&self) {}

    /// Releases the bdev's resources once it is unregistered, every descriptor closed and
    /// every channel released. Call `done.complete()` when finished (now or later).
    fn destruct(&self, done: DestructDone) {
        done.complete();
    }

    /// The config entry that recreates this bdev (`{"method":..., "params":...}`), if any.
    fn write_config_json(&self, _bdev: &Bdev) -> Option<serde_json::Value> {
        None
    }

    /// Module-specific details for `bdev_get_bdevs` (`driver_specific`).
    fn dump_info_json(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Handed to [`BdevOps::destruct`]; completing it finishes the unregistration.
pub struct DestructDone {
    pub(crate) f: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for DestructDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DestructDone")
    }
}

impl DestructDone {
    /// Reports the destruction finished.
    pub fn complete(self) {
        (self.f)()
    }
}

/// [`BdevOps`] with the channel type erased.
pub(crate) trait ErasedOps: Send + Sync {
    fn module_name(&self) -> &'static str;
    fn create_channel(&self) -> Result<Box<dyn ErasedChannel>>;
    fn unregistering(&self);
    fn destruct(&self, done: DestructDone);
    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value>;
    fn dump_info_json(&self) -> Option<serde_json::Value>;
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A module channel with its type erased: one virtual call per I/O.
pub(crate) trait ErasedChannel {
    fn submit(&self, io: BdevIo);
    fn pass_through(&self) -> Option<(Arc<Desc>, BdevChannel)>;
}

struct ChanImpl<T: BdevOps> {
    ops: Arc<T>,
    ch: T::Channel,
}

impl<T: BdevOps> ErasedChannel for ChanImpl<T> {
    #[inline]
    fn submit(&self, io: BdevIo) {
        self.ops.submit_request(&self.ch, io)
    }
    fn pass_through(&self) -> Option<(Arc<Desc>, BdevChannel)> {
        self.ops.pass_through(&self.ch)
    }
}

pub(crate) struct OpsImpl<T: BdevOps>(pub(crate) Arc<T>);

impl<T: BdevOps> ErasedOps for OpsImpl<T> {
    fn module_name(&self) -> &'static str {
        self.0.module_name()
    }
    fn create_channel(&self) -> Result<Box<dyn ErasedChannel>> {
        let ch = self.0.create_channel()?;
        Ok(Box::new(ChanImpl {
            ops: self.0.clone(),
            ch,
        }))
    }
    fn unregistering(&self) {
        self.0.unregistering()
    }
    fn destruct(&self, done: DestructDone) {
        self.0.destruct(done)
    }
    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        self.0.write_config_json(bdev)
    }
    fn dump_info_json(&self) -> Option<serde_json::Value> {
        self.0.dump_info_json()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        &self.0
    }
}

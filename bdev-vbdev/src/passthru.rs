//! The passthru bdev (SPDK's `bdev_passthru`): the smallest virtual bdev, and the template
//! to copy when writing a new one.
//!
//! A passthru bdev sits on one base bdev and forwards every I/O to it unchanged. It shows
//! each thing a virtual bdev does (the helpers it calls live in `lib.rs`, shared with the
//! error and delay bdevs):
//!
//! 1. **Configuration** ([`PassthruOpts`]): typed options with SPDK's parameter names; the
//!    RPC glue ([`crate::PassthruModule`]) only deserialises them and calls [`create`].
//! 2. **Waiting for the base**: `create` records the config first ([`bdev_core::vbdev::Configs`], the
//!    module's state in this application); if the base does not exist yet, the module's
//!    `examine` builds the bdev when the base registers, as SPDK does, so a config may name
//!    a bdev that comes later.
//! 3. **Claiming the base**: open it and take the exclusive-write claim, so that nobody
//!    else writes underneath us ([`bdev_core::vbdev::open_base`]).
//! 4. **Registering** a bdev that looks like the base: same geometry, alignment, limits and
//!    I/O types ([`bdev_core::vbdev::props_like`], `io_type_supported`).
//! 5. **Per-thread channels**: each thread's channel holds that thread's channel to the
//!    base; the data path takes no lock and allocates nothing.
//! 6. **Forwarding I/O**: the incoming I/O goes down to the base in place, with its buffers;
//!    the core restores it and completes it with the base's status. Since that is all it
//!    does, it also says so (`pass_through`): the core then takes each I/O down to the
//!    base itself, the cheapest level there is, and calls `submit_request` only for
//!    what can't go that way. A bdev that changes the I/O on the way leaves that out and
//!    uses [`BdevIo::forward`] / `forward_to` with a callback (see [`crate::error`],
//!    [`crate::delay`]), or `submit_child` for a different range.
//! 7. **Going away with the base**: when the base is removed (hot-remove, delete), the
//!    event callback unregisters the passthru bdev; its consumers get their own remove
//!    event and close; once every channel is gone `destruct` closes the base descriptor,
//!    which lets the base's removal finish. The config stays, so the bdev comes back if the
//!    base does; `bdev_passthru_delete` forgets it.

use std::sync::Arc;

use bdev_core::bdev::{
    self, Bdev, BdevChannel, BdevIo, BdevOps, Desc, DestructDone, IoType, PassThrough,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use bdev_core::vbdev::{BaseLink, Configs, VbdevConfig};

use crate::Error;

/// The module's name, which also names its claims.
pub const MODULE: &str = "passthru";

/// Options of `bdev_passthru_create` (SPDK's names).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PassthruOpts {
    /// The bdev to sit on (it may not exist yet).
    pub base_bdev_name: String,
    /// The passthru bdev's name.
    pub name: String,
    /// Its UUID (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl VbdevConfig for PassthruOpts {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn base_name(&self) -> &str {
        &self.base_bdev_name
    }
}

/// One passthru bdev: what every thread shares.
struct Passthru {
    opts: PassthruOpts,
    /// The base, for the I/O types it supports.
    base: Bdev,
    /// Our claimed descriptor on the base, held until `destruct`.
    link: BaseLink,
}

/// A thread's channel: the descriptor (I/O calls need one) and this thread's base channel.
struct PtChannel {
    desc: Arc<Desc>,
    base: BdevChannel,
}

impl BdevOps for Passthru {
    type Channel = PtChannel;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<PtChannel> {
        let (desc, base) = self.link.channel(&self.opts.name)?;
        Ok(PtChannel { desc, base })
    }

    // Inlined into the core's type-erased channel, which calls it: one call per I/O at
    // this level instead of two (callgrind: 8 instructions).
    #[inline]
    fn submit_request(&self, ch: &PtChannel, io: BdevIo) {
        // The whole data path: down to the base, completed with its status. Were there
        // something to do on completion, it would be
        // `io.forward(&ch.desc, &ch.base, |status, io| { ...; io.complete(status) })`.
        io.forward_and_complete(&ch.desc, &ch.base);
    }

    // Because the data path is only that, the layer may do it without calling us: it
    // takes each I/O down to the base itself, and `submit_request` gets only what can't
    // go that way (a base frozen by a reset, say). A bdev that does anything per I/O
    // leaves this out.
    fn pass_through(&self, ch: &PtChannel) -> Option<PassThrough> {
        Some(PassThrough::to(ch.desc.clone(), ch.base.clone()))
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        self.base.io_type_supported(io_type)
    }

    fn destruct(&self, done: DestructDone) {
        // Every consumer has closed and every channel is gone: let go of the base.
        self.link.close();
        done.complete();
    }

    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        // The UUID it has, given or not, so that a reload gives the same bdev.
        let mut opts = self.opts.clone();
        opts.uuid = Some(bdev.uuid());
        Some(serde_json::json!({"method": "bdev_passthru_create", "params": opts}))
    }

    fn dump_info_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"passthru": {
            "name": self.opts.name,
            "base_bdev_name": self.opts.base_bdev_name,
        }}))
    }
}

/// Opens and claims `base`, registers the passthru bdev on it.
fn build(opts: &PassthruOpts, base: &Bdev) -> Result<Bdev, Error> {
    let desc = bdev_core::vbdev::open_base(base, MODULE, &opts.name)?;
    let props = bdev_core::vbdev::props_like(base, &opts.name, "passthru", opts.uuid);
    let ops = Arc::new(Passthru {
        opts: opts.clone(),
        base: base.clone(),
        link: BaseLink::new(desc),
    });
    // On failure the descriptor, and with it the claim, goes with `ops`.
    Ok(bdev::register(props, ops)?)
}

/// Creates a passthru bdev (`bdev_passthru_create`). If the base does not exist yet, the
/// config is kept and the bdev appears when the base does; the name is returned either way.
pub fn create(opts: PassthruOpts) -> Result<String, Error> {
    Configs::<PassthruOpts>::get()?.create(opts, build)
}

/// The examine hook: builds every configured passthru waiting for `base`.
pub(crate) fn examine(base: &Bdev) {
    if let Ok(c) = Configs::<PassthruOpts>::get() {
        c.examine(base, build);
    }
}

/// Deletes a passthru bdev (`bdev_passthru_delete`): forgets its config and returns once
/// the bdev is unregistered.
pub async fn delete(name: &str) -> Result<(), Error> {
    Ok(Configs::<PassthruOpts>::get()?.delete(name, MODULE).await?)
}

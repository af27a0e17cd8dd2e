//! Files and block devices as bdevs, with O_DIRECT, through two engines behind one small
//! trait ([`engine::Engine`]): Linux AIO by raw syscalls ([`aio`]) and io_uring ([`uring`]).
//!
//! SPDK's methods: `bdev_aio_create {name, filename, block_size, readonly, fallocate}`
//! (plus `submit_batch`, ours), `bdev_aio_delete`, `bdev_aio_rescan`, `bdev_uring_create
//! {name, filename, block_size}` (plus `sqpoll_idle_ms`, `sqpoll_cpu`, `fixed_file`,
//! `registered_buffers`, `defer_taskrun` and `submit_batch`, ours), `bdev_uring_delete`.
//!
//! Each channel (thread) has its own engine and a poller: operations are pushed at
//! submission, handed to the kernel at each poll (two per system call by default, one
//! call for all on a plain io_uring ring: see docs/design.md), and reaped by the poller
//! (from the completion ring in user space for both engines). Misaligned buffers reach
//! the engine through the core's bounce service, as the bdev requires its block size as
//! alignment.

pub mod aio;
mod bdev;
pub mod engine;
mod file;
pub mod uring;

use std::sync::Arc;

/// Most segments one read or write may have (Linux's UIO_MAXIOV).
const UIO_MAXIOV: u32 = 1024;

use bdev_core::bdev::{self as core_bdev, BdevProps};
use bdev_core::config::{Methods, parse_params};
use bdev_core::module::BdevModule;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use bdev::EngineKind;

/// The AIO module's name.
pub const AIO: &str = "aio";
/// The io_uring module's name.
pub const URING: &str = "uring";

/// What can go wrong creating, rescanning or deleting these bdevs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target or the options are unusable; the message says how.
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
    /// The bdev layer refused.
    #[error(transparent)]
    Core(#[from] bdev_core::Error),
}

impl From<Error> for bdev_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(c) => c,
            Error::NotFound { name, .. } => bdev_core::Error::NoSuchBdev { name },
            Error::InvalidOpts(m) => bdev_core::Error::invalid("target", m),
        }
    }
}

/// Options of `bdev_aio_create` (SPDK's names).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AioOpts {
    /// Bdev name.
    pub name: String,
    /// File or block device.
    pub filename: String,
    /// Block size (0 or absent: the device's, 512 for a file).
    #[serde(default)]
    pub block_size: u32,
    /// Open read-only: writes, unmaps and flushes are refused.
    #[serde(default)]
    pub readonly: bool,
    /// Offer unmap and write_zeroes (fallocate, or discard/zeroout on a block device).
    #[serde(default)]
    pub fallocate: bool,
    /// UUID (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Ours: the most I/Os one io_submit hands the kernel, of those a poll found queued
    /// (absent: 2, the most the kernel takes without plugging them; 0: all in one call).
    /// Left out of saved configs when absent, so that SPDK can load them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_batch: Option<u32>,
}

/// Options of `bdev_uring_create` (SPDK's names, and some of ours).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UringOpts {
    /// Bdev name.
    pub name: String,
    /// File or block device.
    pub filename: String,
    /// Block size (0 or absent: the device's, 512 for a file).
    #[serde(default)]
    pub block_size: u32,
    /// UUID (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Ours: an SQPOLL kernel thread submits, idling this many ms (no syscall per batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqpoll_idle_ms: Option<u32>,
    /// Ours: the CPU the SQPOLL thread runs on. Give it a core the reactors don't busy-poll:
    /// sharing one, it only runs when the scheduler preempts the reactor (milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqpoll_cpu: Option<u32>,
    /// Ours: register the file with each ring.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_file: bool,
    /// Ours: registered-buffer slots per ring (0: none); caller buffers are registered on
    /// first use and then read and written as fixed buffers.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub registered_buffers: u16,
    /// Ours: the kernel holds completions until the reactor's next poll enters the ring
    /// (IORING_SETUP_DEFER_TASKRUN), instead of interrupting the reactor to post them.
    /// Absent: on where the kernel offers it (6.1 on) and without SQPOLL; `true` where it
    /// doesn't is an error. With [`UringOpts::submit_batch`]'s default it took the virtio
    /// disk from 0.93x fio (a plain ring, one enter per poll) to 1.04x, and the loop device
    /// stayed level at ~1.07x (docs/benchmarks.md). Ignored in interrupt mode, where the
    /// ring's fd must wake the reactor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer_taskrun: Option<bool>,
    /// Ours: the most SQEs one io_uring_enter hands the kernel, of those a poll found
    /// queued (0: all in one enter). Absent: 2 on a DEFER_TASKRUN ring, all in one enter
    /// on a plain ring (where small enters lost 25 to 40 % on a loop device). Not with
    /// SQPOLL, whose kernel thread does the submitting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_batch: Option<u32>,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

#[allow(clippy::too_many_arguments)]
fn create_inner(
    module: &'static str,
    name: &str,
    filename: &str,
    block_size: u32,
    readonly: bool,
    fallocate: bool,
    uuid: Option<Uuid>,
    kind: EngineKind,
    config: Value,
) -> Result<core_bdev::Bdev, Error> {
    if name.is_empty() {
        return Err(Error::InvalidOpts("bdev name must not be empty".into()));
    }
    if core_bdev::get_by_name(name).is_some() {
        return Err(Error::Core(bdev_core::Error::BdevExists {
            name: name.into(),
        }));
    }
    let t = file::open(filename, block_size, readonly)?;
    let mut props = BdevProps::new(name, t.block_len, t.num_blocks)
        .product_name(if module == AIO {
            "AIO disk"
        } else {
            "URING bdev"
        })
        .uuid(uuid)
        .buf_align(t.block_len as usize)
        // The kernel takes at most UIO_MAXIOV segments per operation; the core splits.
        .segments(0, UIO_MAXIOV);
    props.write_cache = true;
    let ops = Arc::new(bdev::FileBdev {
        module,
        filename: filename.to_string(),
        file: Arc::new(t.file),
        kind,
        blockdev: t.blockdev,
        readonly,
        fallocate,
        config,
        fixed_ios: Default::default(),
    });
    Ok(core_bdev::register(props, ops)?)
}

/// Creates an AIO bdev (`bdev_aio_create`).
pub fn create_aio(o: AioOpts) -> Result<core_bdev::Bdev, Error> {
    let config = serde_json::to_value(&o).map_err(|e| Error::InvalidOpts(e.to_string()))?;
    create_inner(
        AIO,
        &o.name,
        &o.filename,
        o.block_size,
        o.readonly,
        o.fallocate,
        o.uuid,
        EngineKind::Aio {
            submit_batch: o.submit_batch.unwrap_or(engine::SUBMIT_BATCH),
        },
        config,
    )
}

/// Creates an io_uring bdev (`bdev_uring_create`). Unmap and write_zeroes are offered.
pub fn create_uring(o: UringOpts) -> Result<core_bdev::Bdev, Error> {
    let config = serde_json::to_value(&o).map_err(|e| Error::InvalidOpts(e.to_string()))?;
    if o.sqpoll_cpu.is_some() && o.sqpoll_idle_ms.is_none() {
        return Err(Error::InvalidOpts("sqpoll_cpu needs sqpoll_idle_ms".into()));
    }
    let sqpoll = o.sqpoll_idle_ms.is_some();
    if o.defer_taskrun == Some(true) && sqpoll {
        // The kernel refuses the pair: the SQPOLL thread, not ours, would run the work.
        return Err(Error::InvalidOpts(
            "defer_taskrun can't go with sqpoll_idle_ms".into(),
        ));
    }
    if o.submit_batch.is_some() && sqpoll {
        return Err(Error::InvalidOpts(
            "submit_batch can't go with sqpoll_idle_ms (the SQPOLL thread submits)".into(),
        ));
    }
    // Refused now rather than at every channel's creation (kernels before 6.1).
    let probe = crate::uring::probe_defer_taskrun;
    let defer_taskrun = match o.defer_taskrun {
        Some(true) => {
            probe().map_err(|e| {
                Error::InvalidOpts(format!(
                    "defer_taskrun: this kernel refuses IORING_SETUP_DEFER_TASKRUN: {e}"
                ))
            })?;
            true
        }
        Some(false) => false,
        None => !sqpoll && probe().is_ok(),
    };
    let kind = EngineKind::Uring(crate::uring::RingOpts {
        sqpoll: o.sqpoll_idle_ms.map(|i| (i, o.sqpoll_cpu)),
        fixed_file: o.fixed_file,
        registered_buffers: o.registered_buffers,
        defer_taskrun,
        submit_batch: o.submit_batch,
    });
    create_inner(
        URING,
        &o.name,
        &o.filename,
        o.block_size,
        false,
        true,
        o.uuid,
        kind,
        config,
    )
}

fn find(name: &str, module: &'static str) -> Result<core_bdev::Bdev, Error> {
    core_bdev::get_by_name(name)
        .filter(|b| b.module_name() == module)
        .ok_or_else(|| Error::NotFound {
            name: name.to_string(),
            module,
        })
}

/// Deletes an AIO or io_uring bdev; returns once it is unregistered.
pub async fn delete(name: &str, module: &'static str) -> Result<(), Error> {
    Ok(find(name, module)?.unregister_async().await?)
}

/// Re-reads the size of an AIO (`module` [`AIO`]) or io_uring ([`URING`]) bdev's file and
/// tells open descriptors if it changed (`bdev_aio_rescan`, `bdev_uring_rescan`).
pub fn rescan(name: &str, module: &'static str) -> Result<(), Error> {
    let b = find(name, module)?;
    let ops = b.ops::<bdev::FileBdev>().ok_or_else(|| Error::NotFound {
        name: name.to_string(),
        module,
    })?;
    let size = file::size_of(&ops.file, ops.blockdev)
        .map_err(|e| Error::InvalidOpts(format!("{}: {e}", ops.filename)))?;
    let n = size / b.block_len() as u64;
    if n != b.num_blocks() {
        b.notify_blockcnt_change(n)?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// The AIO module.
#[derive(Debug, Default)]
pub struct AioModule;

impl BdevModule for AioModule {
    fn name(&self) -> &'static str {
        AIO
    }
    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("bdev_aio_create", |p| {
            let o: AioOpts = parse_params("bdev_aio_create", p)?;
            Ok(Value::String(create_aio(o)?.name().to_string()))
        });
        m.register("bdev_aio_delete", |p| {
            Box::pin(async move {
                let d: NameParams = parse_params("bdev_aio_delete", p)?;
                delete(&d.name, AIO).await?;
                Ok(Value::Bool(true))
            })
        });
        m.register_sync("bdev_aio_rescan", |p| {
            let d: NameParams = parse_params("bdev_aio_rescan", p)?;
            rescan(&d.name, AIO)?;
            Ok(Value::Bool(true))
        });
    }
}

/// The io_uring module.
#[derive(Debug, Default)]
pub struct UringModule;

impl BdevModule for UringModule {
    fn name(&self) -> &'static str {
        URING
    }
    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("bdev_uring_create", |p| {
            let o: UringOpts = parse_params("bdev_uring_create", p)?;
            Ok(Value::String(create_uring(o)?.name().to_string()))
        });
        m.register("bdev_uring_delete", |p| {
            Box::pin(async move {
                let d: NameParams = parse_params("bdev_uring_delete", p)?;
                delete(&d.name, URING).await?;
                Ok(Value::Bool(true))
            })
        });
        m.register_sync("bdev_uring_rescan", |p| {
            let d: NameParams = parse_params("bdev_uring_rescan", p)?;
            rescan(&d.name, URING)?;
            Ok(Value::Bool(true))
        });
    }
}

/// Adds both modules to the current application and their methods to `m`.
pub fn register(m: &mut Methods) -> bdev_core::Result<()> {
    m.add_module(Arc::new(AioModule))?;
    m.add_module(Arc::new(UringModule))
}

#[cfg(test)]
mod tests;

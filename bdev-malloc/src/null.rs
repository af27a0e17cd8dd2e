//! The null bdev: stores nothing, completes everything from a per-thread poller.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use bdev_core::bdev::{Bdev, BdevIo, BdevOps, BdevProps, IoQueue, IoStatus, IoType, register};
use bdev_core::thread::{PollStatus, Poller, current_or};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{Error, check_no_metadata, find};

/// Module name.
pub const MODULE: &str = "null";

/// `bdev_null_create` params (SPDK's names).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NullOpts {
    /// Bdev name.
    pub name: String,
    /// UUID (generated when absent).
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Data block size in bytes, a multiple of 512.
    pub block_size: u32,
    /// Physical block size (a multiple of 512, or 0 for the block size).
    #[serde(default)]
    pub physical_block_size: u32,
    /// Metadata bytes per block (must be 0 for now).
    #[serde(default)]
    pub md_size: u32,
    /// DIF type (must be 0 for now).
    #[serde(default)]
    pub dif_type: u32,
    /// Whether DIF is at the head of the metadata.
    #[serde(default)]
    pub dif_is_head_of_md: bool,
    /// DIF protection information format.
    #[serde(default)]
    pub dif_pi_format: u32,
}

impl NullOpts {
    /// Options for a null bdev of `num_blocks` blocks of `block_size` bytes.
    pub fn new(name: impl Into<String>, num_blocks: u64, block_size: u32) -> Self {
        NullOpts {
            name: name.into(),
            num_blocks,
            block_size,
            ..Default::default()
        }
    }
}

/// Per-thread state shared by every null bdev's channel on the thread (SPDK has one
/// io_device for all null bdevs): the queue of I/O to complete and the poller that does it.
/// It lives as long as some null channel on the thread holds it.
struct NullThread {
    queue: IoQueue,
    _poller: RefCell<Option<Poller>>,
}

/// The current thread's [`NullThread`], created with its poller on first use.
#[derive(Default)]
struct NullThreadSlot(RefCell<Weak<NullThread>>);

fn null_thread() -> bdev_core::Result<Rc<NullThread>> {
    let t = current_or("null channel")?;
    let slot = t.local::<NullThreadSlot>();
    if let Some(nt) = slot.0.borrow().upgrade() {
        return Ok(nt);
    }
    let nt = Rc::new(NullThread {
        queue: IoQueue::default(),
        _poller: RefCell::new(None),
    });
    let w = Rc::downgrade(&nt);
    let p = Poller::register("bdev_null", move || match w.upgrade() {
        Some(nt) => nt.queue.drain(|io| io.complete(IoStatus::Success)),
        None => PollStatus::Idle,
    })?;
    if bdev_core::app::interrupt_mode() {
        // No fd to sleep on: paused while nothing is queued, so an idle reactor sleeps.
        nt.queue.pause_while_empty(&p);
    }
    *nt._poller.borrow_mut() = Some(p);
    *slot.0.borrow_mut() = Rc::downgrade(&nt);
    Ok(nt)
}

struct NullBdev {
    opts: NullOpts,
}

impl BdevOps for NullBdev {
    type Channel = Rc<NullThread>;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<Rc<NullThread>> {
        null_thread()
    }

    #[inline]
    fn submit_request(&self, ch: &Rc<NullThread>, io: BdevIo) {
        ch.queue.push(io);
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        // As SPDK's null bdev: no unmap, no flush.
        matches!(
            t,
            IoType::Read | IoType::Write | IoType::WriteZeroes | IoType::Reset
        )
    }

    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        Some(json!({
            "method": "bdev_null_create",
            "params": {
                "name": bdev.name(),
                "num_blocks": bdev.num_blocks(),
                "block_size": bdev.block_len(),
                "physical_block_size": bdev.props().phys_block_len,
                "md_size": self.opts.md_size,
                "dif_type": self.opts.dif_type,
                "dif_is_head_of_md": self.opts.dif_is_head_of_md,
                "dif_pi_format": self.opts.dif_pi_format,
                "uuid": bdev.uuid().to_string(),
            }
        }))
    }
}

/// Creates a null bdev (`bdev_null_create`), on the current thread's application.
pub fn create(opts: NullOpts) -> Result<Bdev, Error> {
    check_no_metadata(opts.md_size, opts.dif_type)?;
    if opts.block_size == 0 || opts.block_size % 512 != 0 {
        return Err(Error::InvalidOpts(format!(
            "Data block size {} is not a multiple of 512.",
            opts.block_size
        )));
    }
    if opts.physical_block_size % 512 != 0 {
        return Err(Error::InvalidOpts(
            "Physical block must be 512 bytes aligned".into(),
        ));
    }
    if opts.num_blocks == 0 {
        return Err(Error::InvalidOpts("Disk must be more than 0 blocks".into()));
    }
    if opts.name.is_empty() {
        return Err(Error::InvalidOpts(
            "Bdev name must not be an empty string".into(),
        ));
    }
    let props = BdevProps::new(&opts.name, opts.block_size, opts.num_blocks)
        .product_name("Null disk")
        .uuid(opts.uuid)
        .phys_block_len(opts.physical_block_size);
    Ok(register(props, Arc::new(NullBdev { opts }))?)
}

/// Grows a null bdev to `new_size_mib` MiB (`bdev_null_resize`); open descriptors get the
/// resize event. As SPDK's, it refuses to shrink below the current size in MiB.
pub fn resize(name: &str, new_size_mib: u64) -> Result<(), Error> {
    let b = find(name, MODULE)?;
    let bs = b.block_len() as u64;
    let cur_mib = b.num_blocks() * bs / (1 << 20);
    if new_size_mib < cur_mib {
        return Err(Error::InvalidOpts(
            "The new bdev size must not be smaller than current bdev size.".into(),
        ));
    }
    let blocks = new_size_mib
        .checked_mul(1 << 20)
        .map(|bytes| bytes / bs)
        .ok_or_else(|| Error::InvalidOpts(format!("{new_size_mib} MiB is too large")))?;
    Ok(b.notify_blockcnt_change(blocks)?)
}

/// Deletes a null bdev (`bdev_null_delete`): returns once it is unregistered.
pub async fn delete(name: &str) -> Result<(), Error> {
    let b = find(name, MODULE)?;
    Ok(b.unregister_async().await?)
}

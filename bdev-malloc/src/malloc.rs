//! The malloc bdev: a RAM disk.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bdev_core::bdev::{Bdev, BdevIo, BdevOps, BdevProps, IoQueue, IoStatus, IoType, register};
use bdev_core::dma::BlockMem;
use bdev_core::thread::{PollStatus, Poller};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{Error, check_no_metadata, find};

/// Module name.
pub const MODULE: &str = "malloc";

/// `bdev_malloc_create` params (SPDK's names; `name` defaults to `Malloc<N>`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MallocOpts {
    /// Bdev name (`Malloc0`, `Malloc1`... when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// UUID (generated when absent).
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Block size in bytes, a multiple of 512.
    pub block_size: u32,
    /// Physical block size in bytes (a multiple of 512, or 0 for the block size).
    #[serde(default)]
    pub physical_block_size: u32,
    /// Optimal I/O boundary in blocks; I/O crossing it is split (0: none).
    #[serde(default)]
    pub optimal_io_boundary: u32,
    /// Metadata bytes per block (must be 0 for now).
    #[serde(default)]
    pub md_size: u32,
    /// Whether metadata is interleaved with data.
    #[serde(default)]
    pub md_interleave: bool,
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

impl MallocOpts {
    /// Options for a named disk of `num_blocks` blocks of `block_size` bytes.
    pub fn new(name: impl Into<String>, num_blocks: u64, block_size: u32) -> Self {
        MallocOpts {
            name: Some(name.into()),
            num_blocks,
            block_size,
            ..Default::default()
        }
    }
}

static NEXT_AUTO_NAME: AtomicU32 = AtomicU32::new(0);

struct MallocDisk {
    mem: BlockMem,
    opts: MallocOpts,
    /// Lets a channel's poller hold the disk.
    self_ref: std::sync::Weak<MallocDisk>,
}

impl MallocDisk {
    #[inline]
    fn execute(&self, io: BdevIo) {
        let off = io.offset_bytes();
        let r = match io.io_type() {
            IoType::Read => io.copy_from_mem(&self.mem, off),
            IoType::Write => io.copy_to_mem(&self.mem, off),
            IoType::Unmap | IoType::WriteZeroes => self.mem.zero(off, io.len_bytes() as usize),
            IoType::Flush | IoType::Reset => Ok(()),
            _ => return io.complete(IoStatus::Failed),
        };
        io.complete(if r.is_ok() {
            IoStatus::Success
        } else {
            IoStatus::Failed
        });
    }
}

/// A thread's channel to a malloc disk: I/O waits here until the channel's poller copies
/// it, a batch at a time, so that completions come from a poller, as SPDK's software accel
/// engine delivers them, rather than being deferred from inside the submission.
/// (Prefetching the source at submission was tried: no gain measurable here.)
pub struct MallocChannel {
    queue: IoQueue,
    poller: RefCell<Option<Poller>>,
}

impl BdevOps for MallocDisk {
    type Channel = Rc<MallocChannel>;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<Rc<MallocChannel>> {
        let disk = self
            .self_ref
            .upgrade()
            .ok_or(bdev_core::Error::NoSuchBdev {
                name: MODULE.into(),
            })?;
        let ch = Rc::new(MallocChannel {
            queue: IoQueue::default(),
            poller: RefCell::new(None),
        });
        let w = Rc::downgrade(&ch);
        let p = Poller::register("bdev_malloc", move || match w.upgrade() {
            Some(ch) => ch.queue.drain(|io| disk.execute(io)),
            None => PollStatus::Idle,
        })?;
        if bdev_core::app::interrupt_mode() {
            // No fd to sleep on: paused while nothing is queued, so an idle reactor sleeps.
            ch.queue.pause_while_empty(&p);
        }
        *ch.poller.borrow_mut() = Some(p);
        Ok(ch)
    }

    #[inline]
    fn submit_request(&self, ch: &Rc<MallocChannel>, io: BdevIo) {
        ch.queue.push(io);
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(
            t,
            IoType::Read
                | IoType::Write
                | IoType::Unmap
                | IoType::Flush
                | IoType::Reset
                | IoType::WriteZeroes
        )
    }

    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        Some(json!({
            "method": "bdev_malloc_create",
            "params": {
                "name": bdev.name(),
                "num_blocks": bdev.num_blocks(),
                "block_size": bdev.block_len(),
                "physical_block_size": bdev.props().phys_block_len,
                "uuid": bdev.uuid().to_string(),
                "optimal_io_boundary": self.opts.optimal_io_boundary,
            }
        }))
    }
}

/// Creates a malloc bdev (`create_malloc_disk`), on the current thread's application.
pub fn create(opts: MallocOpts) -> Result<Bdev, Error> {
    if opts.num_blocks == 0 {
        return Err(Error::InvalidOpts(
            "Disk num_blocks must be greater than 0".into(),
        ));
    }
    if opts.block_size == 0 || opts.block_size % 512 != 0 {
        return Err(Error::InvalidOpts(
            "Data block size must be 512 bytes aligned".into(),
        ));
    }
    if opts.physical_block_size % 512 != 0 {
        return Err(Error::InvalidOpts(
            "Physical block must be 512 bytes aligned".into(),
        ));
    }
    check_no_metadata(opts.md_size, opts.dif_type)?;
    let len = opts
        .num_blocks
        .checked_mul(opts.block_size as u64)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| {
            Error::InvalidOpts(format!(
                "{} blocks of {} bytes is too large",
                opts.num_blocks, opts.block_size
            ))
        })?;
    let name = match &opts.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => format!("Malloc{}", NEXT_AUTO_NAME.fetch_add(1, Ordering::Relaxed)),
    };
    // SPDK allocates the disk 2 MiB-aligned in hugepages; BlockMem prefaults it and asks
    // for transparent huge pages.
    let mem = BlockMem::new(len, 2 << 20).map_err(Error::Core)?;
    let props = BdevProps::new(&name, opts.block_size, opts.num_blocks)
        .product_name("Malloc disk")
        .uuid(opts.uuid)
        .phys_block_len(opts.physical_block_size)
        .optimal_io_boundary(opts.optimal_io_boundary, true)
        .write_cache(true);
    let disk = Arc::new_cyclic(|w| MallocDisk {
        mem,
        opts: MallocOpts {
            name: Some(name),
            ..opts
        },
        self_ref: w.clone(),
    });
    Ok(register(props, disk)?)
}

/// Deletes a malloc bdev (`bdev_malloc_delete`): returns once it is unregistered.
pub async fn delete(name: &str) -> Result<(), Error> {
    let b = find(name, MODULE)?;
    Ok(b.unregister_async().await?)
}

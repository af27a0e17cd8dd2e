//! The bdev over a file or block device, for either engine. Each channel owns an engine
//! and a poller; reads, writes and flushes go through the engine (pushed at submission,
//! handed to the kernel once per poll, reaped by the poller); unmap and write_zeroes are
//! fallocate (files) or BLKDISCARD / BLKZEROOUT (block devices), done at submission, as
//! SPDK's aio bdev does. Where the filesystem can't zero a range (EOPNOTSUPP from
//! `FALLOC_FL_ZERO_RANGE`: ext2/ext3 files, FAT, ...), write_zeroes goes back to the bdev
//! layer, which writes zeroes instead from then on; SPDK fails those I/Os.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use bdev_core::bdev::{Bdev, BdevIo, BdevOps, DestructDone, IoStatus, IoType};
use bdev_core::dma::Iov;
use bdev_core::thread::{PollStatus, Poller};
use serde_json::Value;
use slab::Slab;

use crate::engine::{Engine, Op};

/// Which engine, and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Linux AIO.
    Aio {
        /// The most iocbs per io_submit (0: all queued in one call).
        submit_batch: u32,
    },
    /// io_uring.
    Uring(crate::uring::RingOpts),
}

/// Operations in flight per channel (the engine's queue depth).
pub(crate) const DEPTH: u32 = 256;

pub(crate) struct FileBdev {
    pub(crate) module: &'static str,
    pub(crate) filename: String,
    pub(crate) file: Arc<File>,
    pub(crate) kind: EngineKind,
    pub(crate) blockdev: bool,
    pub(crate) readonly: bool,
    /// Unmap and write_zeroes offered.
    pub(crate) fallocate: bool,
    /// The create call's params, for save_config.
    pub(crate) config: Value,
    /// I/Os done with registered buffers by channels already closed.
    pub(crate) fixed_ios: Arc<std::sync::atomic::AtomicU64>,
}

struct ChanInner {
    eng: RefCell<Box<dyn Engine>>,
    ios: RefCell<Slab<BdevIo>>,
    done: RefCell<Vec<(u64, i64)>>,
}

pub(crate) struct FileChannel {
    inner: Rc<ChanInner>,
    fixed_total: Arc<std::sync::atomic::AtomicU64>,
    _poller: Poller,
}

impl Drop for FileChannel {
    fn drop(&mut self) {
        // The kernel may still write into buffers of I/Os in flight: wait for them before
        // their contexts (and buffers) go.
        let mut eng = self.inner.eng.borrow_mut();
        let mut spins = 0;
        while eng.in_flight() > 0 && spins < 10_000 {
            let _ = eng.submit();
            if eng.reap(&mut |_, _| {}) == 0 {
                match eng.wait_one() {
                    // A signal cut the wait short: wait again (the buffers must outlive
                    // the kernel's use; a uring ring closed now would not wait for them).
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                    Ok(()) => {}
                }
            }
            spins += 1;
        }
        self.fixed_total
            .fetch_add(eng.fixed_ios(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl ChanInner {
    fn poll(&self) -> PollStatus {
        {
            let mut eng = self.eng.borrow_mut();
            if let Err(e) = eng.submit() {
                tracing::warn!("submitting to the kernel: {e}");
            }
            let mut done = self.done.borrow_mut();
            eng.reap(&mut |ud, res| done.push((ud, res)));
        }
        let done = std::mem::take(&mut *self.done.borrow_mut());
        let busy = !done.is_empty();
        for &(ud, res) in &done {
            let io = {
                let mut ios = self.ios.borrow_mut();
                if !ios.contains(ud as usize) {
                    continue;
                }
                ios.remove(ud as usize)
            };
            let want = match io.io_type() {
                IoType::Read | IoType::Write => io.len_bytes() as i64,
                _ => 0,
            };
            let st = if res == want {
                IoStatus::Success
            } else if res < 0 {
                IoStatus::from_errno(res)
            } else {
                // A short transfer: the file shrank underneath, or the device failed.
                IoStatus::Failed
            };
            io.complete(st);
        }
        // Keep the vector's capacity.
        let mut d = done;
        d.clear();
        *self.done.borrow_mut() = d;
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

impl FileBdev {
    /// fallocate or the block-device ioctl for unmap / write_zeroes, now.
    fn sync_op(&self, io: &BdevIo) -> IoStatus {
        let (off, len) = (io.offset_bytes(), io.len_bytes());
        let fd = self.file.as_raw_fd();
        let r = if self.blockdev {
            let req = if io.io_type() == IoType::Unmap {
                crate::file::BLKDISCARD
            } else {
                crate::file::BLKZEROOUT
            };
            let range = [off, len];
            // SAFETY: both ioctls read a [u64; 2] (offset, length) that outlives the call.
            unsafe { libc::ioctl(fd, req, range.as_ptr()) }
        } else {
            let mode = libc::FALLOC_FL_KEEP_SIZE
                | if io.io_type() == IoType::Unmap {
                    libc::FALLOC_FL_PUNCH_HOLE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
            // SAFETY: plain syscall on our descriptor with integer arguments.
            unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) }
        };
        if r < 0 {
            IoStatus::from_errno(-i64::from(
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            ))
        } else {
            IoStatus::Success
        }
    }
}

impl BdevOps for FileBdev {
    type Channel = FileChannel;

    fn module_name(&self) -> &'static str {
        self.module
    }

    fn create_channel(&self) -> bdev_core::Result<FileChannel> {
        let eng: Box<dyn Engine> = match &self.kind {
            EngineKind::Aio { submit_batch } => Box::new(
                crate::aio::Aio::new(
                    self.file.clone(),
                    DEPTH,
                    bdev_core::app::interrupt_mode(),
                    *submit_batch,
                )
                .map_err(|e| bdev_core::Error::invalid("io_setup", e.to_string()))?,
            ),
            EngineKind::Uring(o) => Box::new(
                crate::uring::Uring::new(
                    self.file.clone(),
                    DEPTH,
                    o,
                    bdev_core::app::interrupt_mode(),
                )
                .map_err(|e| bdev_core::Error::invalid("io_uring_setup", e.to_string()))?,
            ),
        };
        let inner = Rc::new(ChanInner {
            eng: RefCell::new(eng),
            ios: RefCell::new(Slab::with_capacity(DEPTH as usize)),
            done: RefCell::new(Vec::with_capacity(DEPTH as usize)),
        });
        let i2 = inner.clone();
        let poller = Poller::register(self.module, move || i2.poll())?;
        if let Some(fd) = inner.eng.borrow().interrupt_fd() {
            poller.set_interrupt_fd(fd);
        }
        Ok(FileChannel {
            inner,
            fixed_total: self.fixed_ios.clone(),
            _poller: poller,
        })
    }

    fn submit_request(&self, ch: &FileChannel, io: BdevIo) {
        let t = io.io_type();
        match t {
            IoType::Read | IoType::Write | IoType::Flush => {}
            IoType::Unmap | IoType::WriteZeroes => {
                let st = self.sync_op(&io);
                if t == IoType::WriteZeroes && st == IoStatus::from_errno(-libc::EOPNOTSUPP as i64)
                {
                    // The filesystem can't zero a range (FALLOC_FL_ZERO_RANGE: ext2/ext3
                    // files, FAT, ...): the bdev layer writes zeroes from now on, as
                    // Linux's block layer falls back.
                    return io.emulate_write_zeroes();
                }
                return io.complete(st);
            }
            // Nothing of ours to reset: what is in the kernel completes on its own.
            _ => return io.complete(IoStatus::Success),
        }
        let c = &ch.inner;
        let (op, key) = {
            let mut ios = c.ios.borrow_mut();
            let entry = ios.vacant_entry();
            let key = entry.key();
            let op = match t {
                IoType::Read => Op::Readv {
                    iov: Iov::as_iovecs(io.iovs()),
                    cnt: io.iovs().len() as u32,
                    offset: io.offset_bytes(),
                    buf: io.data_buffer(),
                },
                IoType::Write => Op::Writev {
                    iov: Iov::as_iovecs(io.iovs()),
                    cnt: io.iovs().len() as u32,
                    offset: io.offset_bytes(),
                    buf: io.data_buffer(),
                },
                _ => Op::Fsync,
            };
            // The context (and its segment array) stays where it is while the slab holds it.
            entry.insert(io);
            (op, key)
        };
        let mut eng = c.eng.borrow_mut();
        // SAFETY: the segments belong to the I/O now held in the slab; it is completed
        // (and its buffers released) only after the engine reaps this op, or after the
        // channel's Drop has waited for the engine to drain.
        let mut r = unsafe { eng.push(op, key as u64) };
        if r.is_err() {
            // Full: hand the batch to the kernel and try once more.
            let _ = eng.submit();
            // SAFETY: as above.
            r = unsafe { eng.push(op, key as u64) };
        }
        drop(eng);
        if r.is_err() {
            // Still full: the layer queues it and retries as I/O completes (NOMEM).
            let io = c.ios.borrow_mut().remove(key);
            io.complete(IoStatus::NoMem);
        }
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Reset => true,
            IoType::Write | IoType::Flush => !self.readonly,
            IoType::Unmap | IoType::WriteZeroes => !self.readonly && self.fallocate,
            _ => false,
        }
    }

    fn destruct(&self, done: DestructDone) {
        done.complete();
    }

    fn write_config_json(&self, bdev: &Bdev) -> Option<Value> {
        let mut p = self.config.clone();
        p["uuid"] = Value::String(bdev.uuid().to_string());
        let method = if self.module == crate::AIO {
            "bdev_aio_create"
        } else {
            "bdev_uring_create"
        };
        Some(serde_json::json!({"method": method, "params": p}))
    }

    fn dump_info_json(&self) -> Option<Value> {
        let mut o = serde_json::json!({"filename": self.filename});
        if self.module == crate::URING {
            o["fixed_buffer_ios"] =
                Value::from(self.fixed_ios.load(std::sync::atomic::Ordering::Relaxed));
        }
        if self.module == crate::AIO {
            o["block_size_override"] =
                Value::Bool(self.config["block_size"].as_u64().unwrap_or(0) != 0);
            o["readonly"] = Value::Bool(self.readonly);
            o["fallocate"] = Value::Bool(self.fallocate);
        }
        Some(serde_json::json!({ self.module: o }))
    }
}

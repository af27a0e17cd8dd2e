//! Descriptors: a consumer's open handle on a bdev (SPDK's `spdk_bdev_desc`), and the I/O
//! calls made through it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::channel::{BdevChannel, ThreadCtx};
use super::registry::{BdevInner, DescRec, Status};
use super::request::IoRequest;
use super::{Bdev, BdevEvent, IoType, get_by_name};
use crate::dma::DmaBuf;
use crate::error::{Error, Result};
use crate::thread::{ThreadHandle, current_or};

static NEXT_DESC_ID: AtomicU64 = AtomicU64::new(1);

struct DescInner {
    id: u64,
    bdev: Arc<BdevInner>,
    write: AtomicBool,
    /// The I/O types it may submit: the bdev's, less the writes if it can't write (one
    /// check per I/O for both).
    allowed: std::sync::atomic::AtomicU32,
    thread: ThreadHandle,
    closed: AtomicBool,
}

/// An open bdev. Usable from any thread (channels are per thread); its event callback runs
/// on the thread that opened it. Dropping it closes it.
pub struct Desc {
    inner: Arc<DescInner>,
}

impl fmt::Debug for Desc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Desc({}, {})",
            self.inner.bdev.props.name,
            if self.is_writable() { "rw" } else { "ro" }
        )
    }
}

/// Runs a descriptor's event callback (on its opener's thread).
pub(crate) fn deliver_event(id: u64, ev: BdevEvent) {
    let Some(tctx) = ThreadCtx::current() else {
        return;
    };
    // Clone the callback out of the map so that it may close its descriptor while it runs.
    let cb = tctx.events.borrow().get(&id).cloned();
    if let Some(cb) = cb {
        if let Ok(mut f) = cb.try_borrow_mut() {
            f(ev);
        }
    }
}

impl Desc {
    /// Opens a bdev by name, alias or UUID (`spdk_bdev_open_ext`), on the current thread,
    /// which will receive `event_cb`'s calls. Writing is refused on a claimed bdev.
    pub fn open(
        name: &str,
        write: bool,
        event_cb: impl FnMut(BdevEvent) + 'static,
    ) -> Result<Desc> {
        let t = current_or("bdev_open")?;
        let bdev = get_by_name(name)
            .ok_or_else(|| Error::NoSuchBdev {
                name: name.to_string(),
            })?
            .0;
        let tctx = ThreadCtx::get(&t)?;
        let id = NEXT_DESC_ID.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = bdev.lock();
            if st.status == Status::Removing {
                return Err(Error::BdevRemoving {
                    name: bdev.props.name.clone(),
                });
            }
            if write {
                if let Some((_, m)) = &st.claim {
                    return Err(Error::Claimed {
                        name: bdev.props.name.clone(),
                        module: m.clone(),
                    });
                }
            }
            st.descs.push(DescRec {
                id,
                thread: t.handle(),
                write,
            });
        }
        tctx.events
            .borrow_mut()
            .insert(id, std::rc::Rc::new(std::cell::RefCell::new(event_cb)));
        let allowed = allowed_types(&bdev, write);
        Ok(Desc {
            inner: Arc::new(DescInner {
                id,
                bdev,
                write: AtomicBool::new(write),
                allowed: std::sync::atomic::AtomicU32::new(allowed),
                thread: t.handle(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The bdev.
    pub fn bdev(&self) -> Bdev {
        Bdev(self.inner.bdev.clone())
    }

    /// The descriptor's id, unique in the process.
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// Asks to hear of I/Os submitted through this descriptor that are outstanding longer
    /// than `timeout_s` seconds (`spdk_bdev_set_timeout`); 0 turns it off. `cb` runs on the
    /// thread of the channel the I/O was submitted on, once per late I/O. Call it on the
    /// thread that opened the descriptor.
    pub fn set_timeout(
        &self,
        timeout_s: u64,
        cb: impl Fn(super::TimedOutIo) + Send + Sync + 'static,
    ) -> Result<()> {
        let t = current_or("bdev_set_timeout")?;
        if t.id() != self.inner.thread.id() {
            return Err(Error::invalid(
                "bdev_set_timeout",
                "call it on the thread that opened the descriptor",
            ));
        }
        let tctx = ThreadCtx::get(&t)?;
        let had = tctx.timeouts.borrow_mut().remove(&self.inner.id).is_some();
        let b = self.inner.bdev.clone();
        if timeout_s == 0 {
            if had {
                timeouts_changed(&b, -1);
            }
            return Ok(());
        }
        if !had {
            timeouts_changed(&b, 1);
        }
        let id = self.inner.id;
        let ticks = timeout_s.saturating_mul(t.ticks_hz());
        let cb: super::timeout::TimeoutCb = Arc::new(cb);
        let dev = b.clone();
        let poller = crate::thread::Poller::register_us(
            "bdev_io_timeout",
            super::timeout::POLL_US,
            move || {
                let cb = cb.clone();
                let r = dev.dev.for_each_channel(
                    move |ch, next| {
                        super::timeout::check(ch, id, ticks, &cb);
                        next.next(Ok(()));
                    },
                    |_| {},
                );
                if let Err(e) = r {
                    tracing::debug!("timeout check: {e}");
                }
                crate::thread::PollStatus::Busy
            },
        )?;
        tctx.timeouts.borrow_mut().insert(id, poller);
        Ok(())
    }

    pub(crate) fn bdev_inner(&self) -> &BdevInner {
        &self.inner.bdev
    }

    /// Whether the descriptor may write.
    #[inline]
    pub fn is_writable(&self) -> bool {
        self.inner.write.load(Ordering::Relaxed)
    }

    /// The I/O types (bits of [`super::IoType::bit`]) it may submit now.
    #[inline(always)]
    pub(crate) fn allowed(&self) -> u32 {
        self.inner.allowed.load(Ordering::Relaxed)
    }

    /// The thread that opened it.
    pub fn thread(&self) -> &ThreadHandle {
        &self.inner.thread
    }

    /// The current thread's channel to the bdev (`spdk_bdev_get_io_channel`).
    pub fn get_io_channel(&self) -> Result<BdevChannel> {
        Ok(BdevChannel {
            ch: self.inner.bdev.dev.get_channel()?,
        })
    }

    /// Takes the exclusive-write claim for `module` (`spdk_bdev_module_claim_bdev`): the
    /// descriptor becomes writable and no other descriptor can open the bdev for writing
    /// until this one closes. Fails if already claimed or another writer is open.
    pub fn claim(&self, module: &str) -> Result<()> {
        let b = &self.inner.bdev;
        let mut st = b.lock();
        if let Some((_, m)) = &st.claim {
            return Err(Error::Claimed {
                name: b.props.name.clone(),
                module: m.clone(),
            });
        }
        let writers = st
            .descs
            .iter()
            .filter(|d| d.write && d.id != self.inner.id)
            .count();
        if writers > 0 {
            return Err(Error::BdevBusy {
                name: b.props.name.clone(),
                op: "claim (open for writing elsewhere)",
                open: writers,
            });
        }
        st.claim = Some((self.inner.id, module.to_string()));
        if let Some(d) = st.descs.iter_mut().find(|d| d.id == self.inner.id) {
            d.write = true;
        }
        self.inner.write.store(true, Ordering::Relaxed);
        self.inner
            .allowed
            .store(allowed_types(b, true), Ordering::Relaxed);
        Ok(())
    }

    /// Releases this descriptor's claim, if it holds one.
    pub fn release_claim(&self) {
        let mut st = self.inner.bdev.lock();
        if st
            .claim
            .as_ref()
            .is_some_and(|(id, _)| *id == self.inner.id)
        {
            st.claim = None;
        }
    }

    /// Closes the descriptor (same as dropping it).
    pub fn close(self) {}

    fn close_inner(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = self.inner.id;
        {
            let mut st = self.inner.bdev.lock();
            st.descs.retain(|d| d.id != id);
            if st.claim.as_ref().is_some_and(|(cid, _)| *cid == id) {
                st.claim = None;
            }
        }
        let bdev = self.inner.bdev.clone();
        let drop_cb = move || {
            if let Some(tctx) = ThreadCtx::current() {
                let cb = tctx.events.borrow_mut().remove(&id);
                drop(cb);
                let timeout = tctx.timeouts.borrow_mut().remove(&id);
                if timeout.is_some() {
                    timeouts_changed(&bdev, -1);
                }
            }
        };
        if self.inner.thread.run(drop_cb).is_err() {
            tracing::debug!("descriptor's thread has exited; its callback is already gone");
        }
        self.inner.bdev.maybe_finish_unregister();
    }

    // ---- I/O -------------------------------------------------------------------------

    fn req<'a, P: super::IoPayload>(
        &'a self,
        ch: &'a BdevChannel,
        t: IoType,
        offset: u64,
        num: u64,
        payload: P,
    ) -> IoRequest<'a, P> {
        IoRequest::new(self, ch, t, offset, num, payload)
    }

    /// Reads `num` blocks at `offset` into `buf` (`spdk_bdev_read_blocks`).
    #[inline]
    pub fn read_blocks<'a>(
        &'a self,
        ch: &'a BdevChannel,
        buf: DmaBuf,
        offset: u64,
        num: u64,
    ) -> IoRequest<'a, DmaBuf> {
        self.req(ch, IoType::Read, offset, num, buf)
    }

    /// Reads into several buffers, filled in order (`spdk_bdev_readv_blocks`).
    #[inline]
    pub fn readv_blocks<'a>(
        &'a self,
        ch: &'a BdevChannel,
        bufs: Vec<DmaBuf>,
        offset: u64,
        num: u64,
    ) -> IoRequest<'a, Vec<DmaBuf>> {
        self.req(ch, IoType::Read, offset, num, bufs)
    }

    /// Writes `num` blocks at `offset` from `buf` (`spdk_bdev_write_blocks`).
    #[inline]
    pub fn write_blocks<'a>(
        &'a self,
        ch: &'a BdevChannel,
        buf: DmaBuf,
        offset: u64,
        num: u64,
    ) -> IoRequest<'a, DmaBuf> {
        self.req(ch, IoType::Write, offset, num, buf)
    }

    /// Writes from several buffers, in order (`spdk_bdev_writev_blocks`).
    #[inline]
    pub fn writev_blocks<'a>(
        &'a self,
        ch: &'a BdevChannel,
        bufs: Vec<DmaBuf>,
        offset: u64,
        num: u64,
    ) -> IoRequest<'a, Vec<DmaBuf>> {
        self.req(ch, IoType::Write, offset, num, bufs)
    }

    /// Writes zeroes to `num` blocks at `offset` (`spdk_bdev_write_zeroes_blocks`).
    #[inline]
    pub fn write_zeroes_blocks<'a>(
        &'a self,
        ch: &'a BdevChannel,
        offset: u64,
        num: u64,
    ) -> IoRequest<'a, ()> {
        self.req(ch, IoType::WriteZeroes, offset, num, ())
    }

    /// Unmaps `num` blocks at `offset` (`spdk_bdev_unmap_blocks`).
    #[inline]
    pub fn unmap_blocks<'a>(
        &'a self,
        ch: &'a BdevChannel,
        offset: u64,
        num: u64,
    ) -> IoRequest<'a, ()> {
        self.req(ch, IoType::Unmap, offset, num, ())
    }

    /// Flushes `num` blocks at `offset` (`spdk_bdev_flush_blocks`).
    #[inline]
    pub fn flush_blocks<'a>(
        &'a self,
        ch: &'a BdevChannel,
        offset: u64,
        num: u64,
    ) -> IoRequest<'a, ()> {
        self.req(ch, IoType::Flush, offset, num, ())
    }

    /// Resets the bdev (`spdk_bdev_reset`).
    #[inline]
    pub fn reset<'a>(&'a self, ch: &'a BdevChannel) -> IoRequest<'a, ()> {
        self.req(ch, IoType::Reset, 0, 0, ())
    }
}

/// A descriptor of `b` set (+1) or cleared (-1) its timeout: channels track in-flight
/// I/O while any descriptor has one.
fn timeouts_changed(b: &Arc<BdevInner>, delta: isize) {
    let before = if delta > 0 {
        b.timeouts.fetch_add(1, Ordering::AcqRel)
    } else {
        b.timeouts.fetch_sub(1, Ordering::AcqRel)
    };
    let after = before as isize + delta;
    if (before == 0) != (after == 0) {
        let r = b.dev.for_each_channel(
            move |ch, next| {
                // From the count at the visit, not at the change: two sweeps may reach a
                // channel in either order.
                let on = ch.bdev.timeouts.load(Ordering::Acquire) > 0;
                super::timeout::set_tracking(ch, on);
                next.next(Ok(()));
            },
            |_| {},
        );
        if let Err(e) = r {
            tracing::debug!("timeout tracking: {e}");
        }
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        self.close_inner();
    }
}

/// The I/O types a descriptor of `b` may submit: all the bdev supports, less the writes
/// when it is read-only.
fn allowed_types(b: &BdevInner, write: bool) -> u32 {
    if write {
        return b.supported;
    }
    let writes = IoType::ALL
        .iter()
        .filter(|t| t.is_write())
        .fold(0, |m, t| m | t.bit());
    b.supported & !writes
}

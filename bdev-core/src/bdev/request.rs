//! The consumer's I/O call: a request built by a [`super::Desc`] method, then either
//! submitted with a callback or awaited. An awaited request is submitted when it becomes
//! a future (`.await` does that right before polling it).
//!
//! ```no_run
//! # use bdev_core::bdev::{Desc, BdevChannel};
//! # use bdev_core::dma::DmaBuf;
//! # async fn f(desc: &Desc, ch: &BdevChannel) -> Result<(), Box<dyn std::error::Error>> {
//! let buf = DmaBuf::page_aligned(4096)?;
//! // Callback style: runs on this thread when the read completes.
//! desc.read_blocks(ch, buf, 0, 8).submit(|c| assert!(c.is_success()));
//! // Async style: the buffer comes back with the result.
//! let buf = desc.read_blocks(ch, DmaBuf::page_aligned(4096)?, 0, 8).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::channel::{BdevChannel, ThreadCtx};
use super::desc::Desc;
use super::io::{IoCallback, submit};
use super::{Completion, IoError, IoPayload, IoType, Payload};

/// An I/O ready to go: call [`IoRequest::submit`] or `.await` it.
#[must_use = "an I/O request does nothing until submitted or made a future (awaited)"]
pub struct IoRequest<'a, P: IoPayload> {
    desc: &'a Desc,
    ch: &'a BdevChannel,
    io_type: IoType,
    offset: u64,
    num: u64,
    payload: P,
}

impl<P: IoPayload> fmt::Debug for IoRequest<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoRequest({} {}+{})",
            self.io_type, self.offset, self.num
        )
    }
}

impl<'a, P: IoPayload> IoRequest<'a, P> {
    pub(crate) fn new(
        desc: &'a Desc,
        ch: &'a BdevChannel,
        io_type: IoType,
        offset: u64,
        num: u64,
        payload: P,
    ) -> Self {
        IoRequest {
            desc,
            ch,
            io_type,
            offset,
            num,
            payload,
        }
    }

    /// Submits the I/O; `cb` runs on this thread when it completes, never before this call
    /// returns. Allocation-free when `cb` captures at most
    /// [`crate::thread::DEFER_INLINE`] bytes.
    #[inline]
    pub fn submit(self, cb: impl FnOnce(Completion<P>) + 'static) {
        self.send(move || {
            IoCallback::new(move |status, payload: &mut Payload, submit_tick| {
                cb(Completion {
                    status,
                    payload: P::from_payload(std::mem::take(payload)),
                    submit_tick,
                })
            })
        });
    }

    /// Submits with what `cb` makes as the completion (a callback or a future's slot).
    #[inline]
    fn send(self, cb: impl FnOnce() -> IoCallback) {
        submit(
            self.desc,
            self.ch,
            self.io_type,
            self.offset,
            self.num,
            self.payload,
            cb,
        );
    }
}

impl<'a, P: IoPayload> IntoFuture for IoRequest<'a, P> {
    type Output = Result<P, IoError<P>>;
    type IntoFuture = IoFuture<'a, P>;

    /// Submits the I/O now (`.await` polls right after), with a slot of the thread's
    /// table as its completion. The payload goes straight to the I/O context: a future
    /// that held it until its first poll would store it into the task's state and load it
    /// back at once, and that round trip (a store-forwarding stall) cost more than all
    /// the rest of the submission.
    #[inline]
    fn into_future(self) -> IoFuture<'a, P> {
        let tctx: &'a ThreadCtx = &self.ch.ch.tctx;
        let slot = tctx.slot_open();
        self.send(move || IoCallback::Slot(slot));
        IoFuture {
            tctx,
            slot,
            _p: PhantomData,
        }
    }
}

/// The future of an awaited [`IoRequest`]. Unlike most futures, its work has started
/// when it exists: the I/O is submitted when the request becomes this future
/// ([`IntoFuture::into_future`], which `.await` calls), so one that is never polled still
/// performs its I/O (a write lands). Dropping it before completion abandons the result
/// (the I/O itself still completes, and its buffers are freed).
#[must_use = "the I/O is already submitted; dropping this future discards its result"]
pub struct IoFuture<'a, P: IoPayload> {
    /// The thread's I/O state, where the slot is (held directly: the channel's way to it
    /// is a chain of dependent loads, on the path of every resumption).
    tctx: &'a ThreadCtx,
    /// Its slot in the thread's table while in flight ([`NO_SLOT`] after).
    slot: u32,
    _p: PhantomData<fn() -> P>,
}

const NO_SLOT: u32 = u32::MAX;

impl<P: IoPayload> fmt::Debug for IoFuture<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IoFuture")
    }
}

impl<P: IoPayload> Future for IoFuture<'_, P> {
    type Output = Result<P, IoError<P>>;

    // Always inlined: a poll is a few instructions, worth no call of its own.
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slot == NO_SLOT {
            panic!("IoFuture polled after completion");
        }
        let r = self
            .tctx
            .slot_poll(self.slot, cx.waker(), |status, payload| {
                IoError::result(status, P::from_payload(payload))
            });
        match r {
            Some(r) => {
                self.slot = NO_SLOT;
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }
}

impl<P: IoPayload> Drop for IoFuture<'_, P> {
    fn drop(&mut self) {
        if self.slot != NO_SLOT {
            // Completed but not taken: the slot and buffers go now. Still in flight: the
            // completion sees no waiter and frees them.
            self.tctx.slot_drop(self.slot);
        }
    }
}

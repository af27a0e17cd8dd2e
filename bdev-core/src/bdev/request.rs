//! The consumer's I/O call: a request built by a [`super::Desc`] method, then either
//! submitted with a callback or awaited.
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
use std::pin::Pin;
use std::task::{Context, Poll};

use super::channel::{BdevChannel, Waiter};
use super::desc::Desc;
use super::io::{IoCallback, submit};
use super::{Completion, IoError, IoPayload, IoType, Payload};
use crate::thread::task_of;

/// An I/O ready to go: call [`IoRequest::submit`] or `.await` it.
#[must_use = "an I/O request does nothing until submitted or awaited"]
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
        self.send(IoCallback::new(move |status, payload: &mut Payload| {
            cb(Completion {
                status,
                payload: P::from_payload(std::mem::take(payload)),
            })
        }));
    }

    /// Submits with `cb` as the completion (a callback or a future's slot).
    #[inline]
    fn send(self, cb: IoCallback) {
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

    #[inline]
    fn into_future(self) -> IoFuture<'a, P> {
        IoFuture {
            desc: self.desc,
            ch: self.ch,
            io_type: self.io_type,
            offset: self.offset,
            num: self.num,
            payload: Some(self.payload),
            slot: NO_SLOT,
        }
    }
}

/// The future of an awaited [`IoRequest`]. Dropping it before completion abandons the
/// result (the I/O itself still completes, and its buffers are freed).
pub struct IoFuture<'a, P: IoPayload> {
    desc: &'a Desc,
    ch: &'a BdevChannel,
    io_type: IoType,
    offset: u64,
    num: u64,
    /// Present until submitted.
    payload: Option<P>,
    /// Its slot in the thread's table while in flight ([`NO_SLOT`] before and after).
    slot: u32,
}

const NO_SLOT: u32 = u32::MAX;

impl<P: IoPayload> fmt::Debug for IoFuture<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IoFuture")
    }
}

impl<P: IoPayload> Unpin for IoFuture<'_, P> {}

#[inline]
fn waiter(cx: &Context<'_>) -> Waiter {
    match task_of(cx.waker()) {
        Some(t) => Waiter::Task(t),
        None => Waiter::Waker(cx.waker().clone()),
    }
}

impl<P: IoPayload> IoFuture<'_, P> {
    /// The first poll: submit, with this future's slot as the completion.
    #[inline(never)]
    fn start(&mut self, payload: P, cx: &Context<'_>) {
        let slot = self.ch.ch.tctx.slot_open(waiter(cx));
        IoRequest::new(
            self.desc,
            self.ch,
            self.io_type,
            self.offset,
            self.num,
            payload,
        )
        .send(IoCallback::Slot(slot));
        self.slot = slot;
    }
}

impl<P: IoPayload> Future for IoFuture<'_, P> {
    type Output = Result<P, IoError<P>>;

    // Always inlined: the second poll is a few instructions, worth no call of its own.
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(payload) = self.payload.take() {
            self.start(payload, cx);
            // Completions never run inside submit, so nothing can be done yet.
            return Poll::Pending;
        }
        if self.slot == NO_SLOT {
            panic!("IoFuture polled after completion");
        }
        let tctx = &self.ch.ch.tctx;
        match tctx.slot_take(self.slot) {
            Some((status, payload)) => {
                self.slot = NO_SLOT;
                Poll::Ready(
                    Completion {
                        status,
                        payload: P::from_payload(payload),
                    }
                    .into_result(),
                )
            }
            None => {
                tctx.slot_rewait(self.slot, waiter(cx));
                Poll::Pending
            }
        }
    }
}

impl<P: IoPayload> Drop for IoFuture<'_, P> {
    fn drop(&mut self) {
        if self.slot != NO_SLOT {
            // Completed but not taken: the slot and buffers go now. Still in flight: the
            // completion sees no waiter and frees them.
            self.ch.ch.tctx.slot_drop(self.slot);
        }
    }
}

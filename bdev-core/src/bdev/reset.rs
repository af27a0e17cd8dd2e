//! Reset (SPDK's `spdk_bdev_reset`): freeze every channel of the bdev, abort what waits in
//! the layer's queues (NOMEM, QoS), drain what the module holds, reset the module, unfreeze.
//!
//! While a bdev's channels are frozen, new I/O on them completes as `Aborted` (SPDK's
//! behaviour). Draining waits until only the reset is outstanding, at most
//! [`DRAIN_TIMEOUT_US`]: a module that holds I/O until a reset (the error bdev's
//! `pending`) then gets the reset anyway, as SPDK sends it when no drain is configured. A
//! reset submitted while one runs waits on its channel and completes with the running
//! one's status, as SPDK's queued resets do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::channel::{ChanCtx, FLAG_FROZEN};
use super::io::{IoCallback, IoCtx, complete_ctx};
use super::{IoStatus, IoType};
use crate::thread::IoChannel;

/// Longest wait for outstanding I/O before the module is reset anyway.
pub(crate) const DRAIN_TIMEOUT_US: u64 = 1_000_000;

/// Starts `ctx`, a reset submitted on `ch`.
pub(crate) fn start(ch: &IoChannel<ChanCtx>, ctx: Box<IoCtx>) {
    let bdev = ch.bdev.clone();
    // Each reset has a number; one queued behind it waits for that one's outcome, not for
    // whichever reset's final sweep happens to pass by.
    let epoch = {
        let mut st = bdev.reset_busy.lock().unwrap_or_else(|e| e.into_inner());
        let (busy, epoch) = &mut *st;
        if *busy {
            ch.queued_resets.borrow_mut().push((*epoch, ctx));
            return;
        }
        *busy = true;
        *epoch += 1;
        *epoch
    };
    let ch = ch.clone();
    let spawned = crate::thread::spawn_local(async move {
        let status = run(&ch).await;
        // Unfreeze, then let no new reset queue, then finish every queued one.
        ch.bdev
            .frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = ch
            .bdev
            .each_channel(|c| c.flags.set(c.flags.get() & !FLAG_FROZEN))
            .await;
        ch.bdev
            .reset_busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0 = false;
        let _ = ch
            .bdev
            .each_channel(move |c| {
                let st = status;
                let mine: Vec<_> = {
                    let mut q = c.queued_resets.borrow_mut();
                    let (mine, later) = std::mem::take(&mut *q)
                        .into_iter()
                        .partition(|(e, _)| *e == epoch);
                    *q = later;
                    mine
                };
                for (_, r) in mine {
                    complete_ctx(r, st);
                }
            })
            .await;
        complete_ctx(ctx, status);
    });
    if let Err(e) = spawned {
        tracing::error!("reset: {e}");
        bdev.reset_busy.lock().unwrap_or_else(|e| e.into_inner()).0 = false;
    }
}

/// Freeze, abort, drain, reset: the reset's status.
async fn run(ch: &IoChannel<ChanCtx>) -> IoStatus {
    let b = &ch.bdev;
    // Before the sweep: a channel created during it starts frozen.
    b.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let frozen = b
        .each_channel(|c| {
            c.flags.set(c.flags.get() | FLAG_FROZEN);
            let mut waiting: Vec<Box<IoCtx>> = super::service::nomem_take(c).into();
            waiting.extend(super::qos::take_queued(c));
            for w in waiting {
                complete_ctx(w, IoStatus::Aborted);
            }
        })
        .await;
    if let Err(e) = frozen {
        tracing::error!(bdev = %b.props.name, "reset: freezing channels: {e}");
        return IoStatus::Failed;
    }
    let deadline = crate::thread::now() + DRAIN_TIMEOUT_US * crate::thread::ticks_hz() / 1_000_000;
    loop {
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        let _ = b
            .each_channel(move |c| {
                let resets = c.queued_resets.borrow().len() as u64;
                n2.fetch_add(
                    c.outstanding.get().saturating_sub(resets),
                    Ordering::Relaxed,
                );
            })
            .await;
        // Only this reset left (it counts as outstanding on its channel).
        if n.load(Ordering::Relaxed) <= 1 || crate::thread::now() >= deadline {
            break;
        }
        if crate::thread::sleep_us(100).await.is_err() {
            break;
        }
    }
    // The module's reset, as an internal I/O on this channel.
    let Some(mut child) = ch.tctx.alloc() else {
        return IoStatus::NoMem;
    };
    let (tx, rx) = crate::oneshot::channel();
    child.cb = Some(IoCallback::new(move |s, _, _| tx.send(s)));
    child.internal = true;
    super::io::dispatch(ch, child, IoType::Reset, 0, 0);
    rx.await.unwrap_or(IoStatus::Failed)
}

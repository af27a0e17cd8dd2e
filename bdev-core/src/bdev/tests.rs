//! The bdev layer against a small test module, on the deterministic harness: the paths the
//! malloc and null bdevs don't take.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::dma::DmaBuf;
use crate::testing::Harness;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Complete with success inside submit.
    Inline,
    /// Drop the I/O without completing it (a module bug).
    Drop,
}

struct TestBdev {
    behaviour: Behaviour,
    destructed: Arc<AtomicUsize>,
}

impl BdevOps for TestBdev {
    type Channel = ();
    fn module_name(&self) -> &'static str {
        "test"
    }
    fn create_channel(&self) -> crate::Result<()> {
        Ok(())
    }
    fn submit_request(&self, _ch: &(), io: BdevIo) {
        match self.behaviour {
            Behaviour::Inline => io.complete(IoStatus::Success),
            Behaviour::Drop => drop(io),
        }
    }
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Write)
    }
    fn destruct(&self, done: DestructDone) {
        self.destructed.fetch_add(1, Ordering::SeqCst);
        done.complete();
    }
}

/// A waker of no executor that counts its wakes.
struct Count(AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn test_bdev(name: &str, behaviour: Behaviour, align: usize) -> (Bdev, Arc<AtomicUsize>) {
    let destructed = Arc::new(AtomicUsize::new(0));
    let props = BdevProps::new(name, 512, 1024)
        .buf_align(align)
        .product_name("Test disk");
    let b = register(
        props,
        Arc::new(TestBdev {
            behaviour,
            destructed: destructed.clone(),
        }),
    )
    .unwrap();
    (b, destructed)
}

/// One thread, an inline test bdev `name`, a writable descriptor and its channel: what
/// most tests here start from. Bind as `let (h, d, ch)`, so that they drop channel first.
fn open_inline(name: &str) -> (Harness, Desc, super::BdevChannel) {
    let h = Harness::new(1);
    test_bdev(name, Behaviour::Inline, 1);
    let d = Desc::open(name, true, |_| {}).unwrap();
    let ch = d.get_io_channel().unwrap();
    (h, d, ch)
}

#[test]
fn inline_completions_are_deferred_out_of_submit() {
    let (h, d, ch) = open_inline("t_inline");
    let (d, ch) = (Rc::new(d), Rc::new(ch));
    // A chain of 10,000 I/Os, each submitted from the previous one's callback: with inline
    // completion and no deferral this would recurse 10,000 deep.
    let left = Rc::new(Cell::new(10_000u32));
    let depth = Rc::new(Cell::new(0u32));
    let max_depth = Rc::new(Cell::new(0u32));
    fn go(
        d: Rc<Desc>,
        ch: Rc<BdevChannel>,
        left: Rc<Cell<u32>>,
        depth: Rc<Cell<u32>>,
        max: Rc<Cell<u32>>,
    ) {
        depth.set(depth.get() + 1);
        max.set(max.get().max(depth.get()));
        let (d2, ch2) = (d.clone(), ch.clone());
        d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 0, 1)
            .submit(move |c| {
                assert!(c.is_success());
                if left.get() > 0 {
                    left.set(left.get() - 1);
                    go(d2, ch2, left, depth.clone(), max);
                }
                depth.set(depth.get() - 1);
            });
    }
    go(
        d.clone(),
        ch.clone(),
        left.clone(),
        depth.clone(),
        max_depth.clone(),
    );
    h.poll_threads();
    assert_eq!(left.get(), 0);
    assert!(
        max_depth.get() <= 2,
        "completion ran inside submit (depth {})",
        max_depth.get()
    );
}

#[test]
fn an_io_dropped_by_its_module_completes_as_failed() {
    let h = Harness::new(1);
    test_bdev("t_drop", Behaviour::Drop, 1);
    let st = h.block_on(0, async {
        let d = Desc::open("t_drop", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        let e = d
            .write_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 0, 1)
            .await
            .unwrap_err();
        (e.status, e.payload.len(), ch.outstanding())
    });
    assert_eq!(st, (IoStatus::Failed, 512, 0));
}

#[test]
fn props_are_validated_at_registration() {
    let _h = Harness::new(1);
    let reg = |p: BdevProps| {
        register(
            p,
            Arc::new(TestBdev {
                behaviour: Behaviour::Inline,
                destructed: Default::default(),
            }),
        )
    };
    assert!(reg(BdevProps::new("", 512, 8)).is_err());
    assert!(reg(BdevProps::new("z", 0, 8)).is_err());
    assert!(reg(BdevProps::new("z", 512, 0)).is_err());
    assert!(reg(BdevProps::new("z", 4096, u64::MAX)).is_err());
    assert!(reg(BdevProps::new("z", 512, 8).buf_align(3)).is_err());
    let b = reg(BdevProps::new("z", 512, 8).alias("zz")).unwrap();
    assert_eq!(b.props().phys_block_len, 512);
    assert!(matches!(
        reg(BdevProps::new("zz", 512, 8)),
        Err(crate::Error::BdevExists { .. })
    ));
    assert!(get_by_name("zz").is_some());
    assert_eq!(b.product_name(), "");
}

#[test]
fn destruct_runs_once_after_descriptors_and_channels_are_gone() {
    let h = Harness::new(2);
    let (b, destructed) = h.run_on(0, || test_bdev("t_destruct", Behaviour::Inline, 1));
    let desc = Arc::new(h.run_on(0, || Desc::open("t_destruct", false, |_| {}).unwrap()));
    let ch1 = h.run_on(1, || desc.get_io_channel().unwrap());
    let done = Rc::new(RefCell::new(None));
    let d = done.clone();
    let (tx, rx) = crate::oneshot::channel();
    h.run_on(0, || b.unregister(move |r| tx.send(r)));
    let jh = h.run_on(0, || {
        crate::thread::spawn_local(async move { *d.borrow_mut() = rx.await }).unwrap()
    });
    h.poll_threads();
    assert_eq!(destructed.load(Ordering::SeqCst), 0, "a descriptor is open");
    drop(desc);
    h.poll_threads();
    assert_eq!(
        destructed.load(Ordering::SeqCst),
        0,
        "a channel is still held"
    );
    assert!(matches!(
        h.run_on(0, || Desc::open("t_destruct", false, |_| {})),
        Err(crate::Error::BdevRemoving { .. })
    ));
    drop(ch1);
    h.poll_threads();
    assert_eq!(destructed.load(Ordering::SeqCst), 1);
    assert!(jh.is_finished());
    assert!(matches!(*done.borrow(), Some(Ok(()))));
    assert!(h.run_on(0, || get_by_name("t_destruct").is_none()));
    // Unregistered again through a handle still held: answered at once, once.
    let again = Arc::new(std::sync::Mutex::new(0));
    let a2 = again.clone();
    h.run_on(0, || {
        b.unregister(move |r| *a2.lock().unwrap() += usize::from(r.is_ok()))
    });
    h.poll_threads();
    assert_eq!(*again.lock().unwrap(), 1);
    assert_eq!(destructed.load(Ordering::SeqCst), 1, "destructed once");
}

#[test]
fn a_channel_created_during_a_reset_starts_frozen() {
    let h = Harness::new(2);
    let (b, _) = h.run_on(0, || test_bdev("t_frozen", Behaviour::Inline, 1));
    h.run_on(0, || b.0.frozen.store(true, Ordering::SeqCst));
    let desc = Arc::new(h.run_on(0, || Desc::open("t_frozen", false, |_| {}).unwrap()));
    let ch = h.run_on(1, || desc.get_io_channel().unwrap());
    let st = Rc::new(Cell::new(None));
    let s2 = st.clone();
    h.run_on(1, || {
        desc.read_blocks(&ch, DmaBuf::new(512, 512).unwrap(), 0, 1)
            .submit(move |c| s2.set(Some(c.status)))
    });
    h.poll_threads();
    assert_eq!(st.get(), Some(IoStatus::Aborted), "not let past the freeze");
    drop(ch);
    drop(desc);
    h.poll_threads();
}

#[test]
fn a_dropped_io_future_loses_nothing_and_its_slot_is_reused() {
    let (h, d, ch) = open_inline("t_cancel");
    let (d, ch) = (Rc::new(d), Rc::new(ch));
    let tctx = ch.ch.tctx.clone();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    // Poll an awaited read once (it is submitted), then drop it while in flight.
    {
        let mut fut = std::pin::pin!(std::future::IntoFuture::into_future(d.read_blocks(
            &ch,
            DmaBuf::page_aligned(512).unwrap(),
            0,
            1
        )));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ch.outstanding(), 1);
        assert_eq!(tctx.slots_in_use(), 1);
    }
    h.poll_threads();
    assert_eq!(ch.outstanding(), 0, "the abandoned I/O still completed");
    assert_eq!(tctx.slots_in_use(), 0, "its completion freed the slot");
    // Dropped after completing but before its result was taken: the slot goes with it.
    {
        let mut fut = std::pin::pin!(std::future::IntoFuture::into_future(d.read_blocks(
            &ch,
            DmaBuf::page_aligned(512).unwrap(),
            0,
            1
        )));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        h.poll_threads();
        assert_eq!(ch.outstanding(), 0);
        assert_eq!(tctx.slots_in_use(), 1, "the result waits in the slot");
    }
    assert_eq!(tctx.slots_in_use(), 0);
    // Submitted when it becomes a future, before any poll: a result that comes first
    // waits in the slot, and the first poll takes it.
    {
        let mut fut = std::pin::pin!(std::future::IntoFuture::into_future(d.read_blocks(
            &ch,
            DmaBuf::page_aligned(512).unwrap(),
            0,
            1
        )));
        assert_eq!(ch.outstanding(), 1, "in flight before its first poll");
        h.poll_threads();
        assert_eq!(ch.outstanding(), 0);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => assert_eq!(r.map(|b| b.len()).ok(), Some(512)),
            std::task::Poll::Pending => panic!("a completed I/O polled as pending"),
        }
        assert_eq!(tctx.slots_in_use(), 0);
    }
    // Dropped before its first poll, in flight: the I/O still completes (it was
    // submitted when it became a future) and its completion frees the slot.
    {
        let fut = std::future::IntoFuture::into_future(d.read_blocks(
            &ch,
            DmaBuf::page_aligned(512).unwrap(),
            0,
            1,
        ));
        assert_eq!(ch.outstanding(), 1);
        drop(fut);
    }
    h.poll_threads();
    assert_eq!(ch.outstanding(), 0);
    assert_eq!(tctx.slots_in_use(), 0);
    // Polled twice by its task before completing (the second a spurious wake), then
    // awaited: the waiter is replaced, and the task is resumed once.
    let (d3, ch3) = (d.clone(), ch.clone());
    let ok = h.block_on(0, async move {
        let buf = DmaBuf::page_aligned(512).unwrap();
        let mut f = std::pin::pin!(std::future::IntoFuture::into_future(
            d3.read_blocks(&ch3, buf, 0, 1)
        ));
        for _ in 0..2 {
            std::future::poll_fn(|cx| {
                assert!(f.as_mut().poll(cx).is_pending());
                std::task::Poll::Ready(())
            })
            .await;
        }
        f.await.is_ok()
    });
    assert!(ok);
    assert_eq!(tctx.slots_in_use(), 0);
    // The next awaited I/O works and reuses the slot.
    let (d2, ch2) = (d.clone(), ch.clone());
    let ok = h.block_on(0, async move {
        d2.read_blocks(&ch2, DmaBuf::page_aligned(512).unwrap(), 0, 1)
            .await
            .is_ok()
    });
    assert!(ok);
    assert_eq!(tctx.slots_in_use(), 0);
}

#[test]
fn an_io_future_polled_by_another_executor_is_woken_through_its_waker() {
    let (h, d, ch) = open_inline("t_foreign");
    let (first, second) = (
        Arc::new(Count(AtomicUsize::new(0))),
        Arc::new(Count(AtomicUsize::new(0))),
    );
    let (w1, w2) = (
        std::task::Waker::from(first.clone()),
        std::task::Waker::from(second.clone()),
    );
    let mut fut = std::pin::pin!(std::future::IntoFuture::into_future(d.read_blocks(
        &ch,
        DmaBuf::page_aligned(512).unwrap(),
        0,
        1
    )));
    assert!(
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(&w1))
            .is_pending()
    );
    // Polled again before completing (a spurious wake), with another waker: that one is
    // woken, not the first.
    assert!(
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(&w2))
            .is_pending()
    );
    h.poll_threads();
    assert_eq!(first.0.load(Ordering::SeqCst), 0);
    assert_eq!(second.0.load(Ordering::SeqCst), 1);
    match fut.as_mut().poll(&mut std::task::Context::from_waker(&w2)) {
        std::task::Poll::Ready(r) => assert_eq!(r.map(|b| b.len()).ok(), Some(512)),
        std::task::Poll::Pending => panic!("completed I/O still pending"),
    }
    assert_eq!(ch.ch.tctx.slots_in_use(), 0);
}

#[test]
fn a_completion_carries_its_submission_tick() {
    let (h, d, ch) = open_inline("t_tick");
    h.advance_time_us(1000);
    h.poll_threads();
    let t0 = crate::thread::now();
    let got = Rc::new(Cell::new(None));
    let refused = Rc::new(Cell::new(None));
    let (g, r) = (got.clone(), refused.clone());
    d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 0, 1)
        .submit(move |c| g.set(Some((c.status, c.submit_tick, crate::thread::now()))));
    // Past the end: refused, with the tick of its refusal.
    d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 1024, 1)
        .submit(move |c| r.set(Some((c.is_success(), c.submit_tick))));
    h.advance_time_us(250);
    h.poll_threads();
    // One tick per microsecond on the harness's clock.
    let hz = crate::thread::ticks_hz();
    assert_eq!(hz, 1_000_000);
    assert_eq!(got.get(), Some((IoStatus::Success, t0, t0 + 250)));
    // Refused at once, though the callback runs at the next pass (after the clock moved).
    assert_eq!(refused.get(), Some((false, t0)));
}

#[test]
fn an_io_set_hands_back_every_completion_with_its_tag() {
    let (h, d, ch) = open_inline("t_set");
    let (d, ch) = (Rc::new(d), Rc::new(ch));
    let (d2, ch2) = (d.clone(), ch.clone());
    let got = h.block_on(0, async move {
        let mut set: IoSet<u32> = IoSet::new();
        assert!(set.join_next().await.is_none(), "an empty set ends at once");
        for i in 0..8u32 {
            let buf = DmaBuf::page_aligned(512).unwrap();
            set.push(d2.read_blocks(&ch2, buf, i as u64, 1), i);
        }
        // Past the end of the bdev (1024 blocks): refused, and handed back as a failure
        // with its buffer.
        let buf = DmaBuf::page_aligned(512).unwrap();
        set.push(d2.read_blocks(&ch2, buf, 1024, 1), 99);
        assert_eq!(set.len(), 9);
        let mut got = Vec::new();
        while let Some((tag, r)) = set.join_next().await {
            let r = r.into_result();
            got.push((
                tag,
                r.map(|b| b.len()).map_err(|e| (e.status, e.payload.len())),
            ));
        }
        assert!(set.is_empty());
        got
    });
    let mut tags: Vec<u32> = got.iter().map(|(t, _)| *t).collect();
    tags.sort();
    assert_eq!(tags, [0, 1, 2, 3, 4, 5, 6, 7, 99]);
    for (tag, r) in got {
        match tag {
            99 => assert!(matches!(
                r,
                Err((IoStatus::Rejected(Reject::OutOfRange), 512))
            )),
            _ => assert_eq!(r, Ok(512)),
        }
    }
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn an_io_set_wakes_its_waiter_once_per_batch_and_loses_nothing_when_dropped() {
    let (h, d, ch) = open_inline("t_set_wake");
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let w = std::task::Waker::from(count.clone());
    let mut set: IoSet<u32> = IoSet::with_capacity(4);
    for i in 0..4u32 {
        set.push(
            d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 0, 1),
            i,
        );
    }
    {
        let mut next = std::pin::pin!(set.join_next());
        let mut cx = std::task::Context::from_waker(&w);
        assert!(next.as_mut().poll(&mut cx).is_pending());
    }
    h.poll_threads();
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the four");
    let mut tags: Vec<u32> = std::iter::from_fn(|| set.try_join_next())
        .map(|(t, _)| t)
        .collect();
    tags.sort();
    assert_eq!(tags, [0, 1, 2, 3]);
    // Dropped with I/O in flight and results not taken: every I/O still completes.
    for i in 0..4u32 {
        set.push(
            d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 0, 1),
            i,
        );
    }
    assert_eq!(ch.outstanding(), 4);
    drop(set);
    h.poll_threads();
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn an_io_set_takes_a_batch_whole_before_newer_completions() {
    let (h, d, ch) = open_inline("t_set_order");
    let mut set: IoSet<u32> = IoSet::new();
    let read = || d.read_blocks(&ch, DmaBuf::page_aligned(512).unwrap(), 0, 1);
    for i in 0..4u32 {
        set.push(read(), i);
    }
    h.poll_threads();
    // Newest first within a batch.
    assert_eq!(set.try_join_next().map(|(t, _)| t), Some(3));
    // Completions that come meanwhile wait for the batch under way to be taken whole.
    for i in 10..12u32 {
        set.push(read(), i);
    }
    h.poll_threads();
    let rest: Vec<u32> = std::iter::from_fn(|| set.try_join_next())
        .map(|(t, _)| t)
        .collect();
    assert_eq!(rest, [2, 1, 0, 11, 10]);
    assert!(set.is_empty());
}

//! Runtime tests on the deterministic harness (and one on real reactors).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::testing::Harness;

#[test]
fn messages_run_on_the_target_thread_when_it_is_polled() {
    let h = Harness::new(2);
    let t1 = h.handle(1);
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let t1b = t1.clone();
    h.run_on(0, || {
        t1.send_msg(move || {
            assert!(t1b.is_current());
            h2.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap()
    });
    h.poll_thread(0);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "thread 0 must not run thread 1's message"
    );
    assert!(h.poll_thread(1));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(!h.poll_thread(1), "nothing left to do");
}

#[test]
fn run_is_inline_on_the_current_thread_and_queued_elsewhere() {
    let h = Harness::new(2);
    let (t0, t1) = (h.handle(0), h.handle(1));
    let hits = Arc::new(AtomicUsize::new(0));
    let (a, b) = (hits.clone(), hits.clone());
    h.run_on(0, || {
        t0.run(move || {
            a.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        t1.run(move || {
            b.fetch_add(10, Ordering::SeqCst);
        })
        .unwrap();
    });
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    h.poll_threads();
    assert_eq!(hits.load(Ordering::SeqCst), 11);
}

#[test]
fn send_msg_to_an_exited_thread_fails() {
    let h = Harness::new(2);
    let t1 = h.handle(1);
    t1.request_exit();
    h.poll_threads();
    assert!(t1.is_exited());
    assert!(matches!(
        t1.send_msg(|| {}),
        Err(Error::ThreadExited { .. })
    ));
}

#[test]
fn active_pollers_report_busy_and_can_pause_resume_and_unregister() {
    let h = Harness::new(1);
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    let p = Poller::register("p", move || {
        r.set(r.get() + 1);
        PollStatus::from(r.get() <= 2)
    })
    .unwrap();
    assert!(h.poll_thread(0));
    assert!(h.poll_thread(0));
    assert!(!h.poll_thread(0), "third run reports idle");
    assert_eq!(runs.get(), 3);
    p.pause();
    h.poll_thread(0);
    assert_eq!(runs.get(), 3);
    p.resume();
    h.poll_thread(0);
    assert_eq!(runs.get(), 4);
    assert_eq!(p.run_counts(), (4, 2));
    drop(p);
    h.poll_thread(0);
    assert_eq!(runs.get(), 4, "dropped poller no longer runs");
}

#[test]
fn a_poller_can_unregister_itself_and_its_closure_is_dropped() {
    let h = Harness::new(1);
    let me: Rc<RefCell<Option<PollerRef>>> = Rc::new(RefCell::new(None));
    let runs = Rc::new(Cell::new(0));
    let guard = Rc::new(());
    let (m, r, g) = (me.clone(), runs.clone(), guard.clone());
    let p = Poller::register("self", move || {
        let _keep = &g;
        r.set(r.get() + 1);
        if r.get() == 2 {
            if let Some(p) = m.borrow().as_ref() {
                p.unregister();
            }
        }
        PollStatus::Busy
    })
    .unwrap();
    *me.borrow_mut() = Some(p.downgrade());
    std::mem::forget(p); // fire and forget: only the poller itself unregisters
    h.poll_thread(0);
    h.poll_thread(0);
    h.poll_thread(0);
    assert_eq!(runs.get(), 2);
    assert_eq!(
        Rc::strong_count(&guard),
        1,
        "closure dropped after unregistering"
    );
    assert!(!me.borrow().as_ref().unwrap().is_registered());
}

#[test]
fn pollers_registered_by_a_poller_run_and_unregistering_others_is_safe() {
    let h = Harness::new(1);
    let slot: Rc<RefCell<Vec<Poller>>> = Rc::new(RefCell::new(Vec::new()));
    let child_runs = Rc::new(Cell::new(0));
    let (s, c) = (slot.clone(), child_runs.clone());
    let _parent = Poller::register("parent", move || {
        let mut v = s.borrow_mut();
        if v.is_empty() {
            let c = c.clone();
            v.push(
                Poller::register("child", move || {
                    c.set(c.get() + 1);
                    PollStatus::Busy
                })
                .unwrap(),
            );
        } else if c.get() >= 3 {
            v.clear();
        }
        PollStatus::Idle
    })
    .unwrap();
    for _ in 0..10 {
        h.poll_thread(0);
    }
    assert_eq!(child_runs.get(), 3);
}

#[test]
fn timed_pollers_follow_the_clock() {
    let h = Harness::new(1);
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    let p = Poller::register_us("t", 100, move || {
        r.set(r.get() + 1);
        PollStatus::Busy
    })
    .unwrap();
    h.poll_thread(0);
    assert_eq!(runs.get(), 0);
    h.advance_time_us(99);
    h.poll_thread(0);
    assert_eq!(runs.get(), 0);
    h.advance_time_us(1);
    h.poll_thread(0);
    assert_eq!(runs.get(), 1);
    h.poll_thread(0);
    assert_eq!(runs.get(), 1, "once per period");
    h.advance_time_us(100);
    h.poll_thread(0);
    assert_eq!(runs.get(), 2);
    p.pause();
    h.advance_time_us(500);
    h.poll_thread(0);
    assert_eq!(runs.get(), 2);
    p.resume();
    h.poll_thread(0);
    assert_eq!(runs.get(), 2, "resumed timer waits a period");
    h.advance_time_us(100);
    h.poll_thread(0);
    assert_eq!(runs.get(), 3);
}

struct Ctx {
    thread: String,
    dropped: Arc<AtomicUsize>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_device(created: &Arc<AtomicUsize>, dropped: &Arc<AtomicUsize>) -> IoDevice<Ctx> {
    let (c, d) = (created.clone(), dropped.clone());
    IoDevice::register("dev", move || {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(Ctx {
            thread: current().unwrap().name().to_string(),
            dropped: d.clone(),
        })
    })
}

#[test]
fn io_channels_are_per_thread_and_reference_counted() {
    let h = Harness::new(2);
    let (created, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let dev = counting_device(&created, &dropped);
    let a = h.run_on(0, || dev.get_channel().unwrap());
    let b = h.run_on(0, || dev.get_channel().unwrap());
    assert!(IoChannel::ptr_eq(&a, &b));
    assert_eq!(a.thread, "ut_thread0");
    let c = h.run_on(1, || dev.get_channel().unwrap());
    assert_eq!(c.thread, "ut_thread1");
    assert_eq!(created.load(Ordering::SeqCst), 2);
    assert_eq!(dev.channel_count(), 2);
    drop(a);
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(b);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(dev.channel_count(), 1);
    // A new channel on thread 0 is a new context.
    let d = h.run_on(0, || dev.get_channel().unwrap());
    assert_eq!(created.load(Ordering::SeqCst), 3);
    drop((c, d));
    assert_eq!(dropped.load(Ordering::SeqCst), 3);
}

#[test]
fn for_each_channel_visits_serially_then_completes_on_the_caller() {
    let h = Harness::new(3);
    let (created, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let dev = counting_device(&created, &dropped);
    let chans: Vec<_> = (0..3)
        .map(|i| h.run_on(i, || dev.get_channel().unwrap()))
        .collect();
    let visited = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done_on = Arc::new(std::sync::Mutex::new(None));
    let (v, d) = (visited.clone(), done_on.clone());
    h.run_on(1, || {
        dev.for_each_channel(
            move |ch, next| {
                v.lock().unwrap().push(ch.thread.clone());
                assert!(ch.thread() == &current().unwrap().handle());
                next.next(Ok(()));
            },
            move |r| {
                assert!(r.is_ok());
                *d.lock().unwrap() = Some(current().unwrap().name().to_string());
            },
        )
        .unwrap()
    });
    h.poll_threads();
    assert_eq!(visited.lock().unwrap().len(), 3);
    assert_eq!(done_on.lock().unwrap().as_deref(), Some("ut_thread1"));
    drop(chans);
}

#[test]
fn for_each_channel_can_continue_later_and_stops_on_error() {
    let h = Harness::new(3);
    let (created, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let dev = counting_device(&created, &dropped);
    let _chans: Vec<_> = (0..3)
        .map(|i| h.run_on(i, || dev.get_channel().unwrap()))
        .collect();
    let visits = Arc::new(AtomicUsize::new(0));
    let result = Arc::new(std::sync::Mutex::new(None));
    let (v, r) = (visits.clone(), result.clone());
    h.run_on(0, || {
        dev.for_each_channel(
            move |_ch, next| {
                let n = v.fetch_add(1, Ordering::SeqCst);
                // Continue from a message, as an asynchronous visit would.
                let me = current().unwrap().handle();
                me.send_msg(move || {
                    next.next(if n == 1 {
                        Err(Error::invalid("x", "stop here"))
                    } else {
                        Ok(())
                    })
                })
                .unwrap();
            },
            move |res| *r.lock().unwrap() = Some(res.is_err()),
        )
        .unwrap()
    });
    h.poll_threads();
    assert_eq!(
        visits.load(Ordering::SeqCst),
        2,
        "the error stops the iteration"
    );
    assert_eq!(*result.lock().unwrap(), Some(true));
}

#[test]
fn device_unregister_waits_for_channels() {
    let h = Harness::new(2);
    let (created, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let dev = counting_device(&created, &dropped);
    let ch = h.run_on(1, || dev.get_channel().unwrap());
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    h.run_on(0, || {
        dev.unregister(move || {
            d.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap()
    });
    h.poll_threads();
    assert_eq!(done.load(Ordering::SeqCst), 0);
    assert!(matches!(
        h.run_on(0, || dev.get_channel()),
        Err(Error::DeviceUnregistering { .. })
    ));
    drop(ch);
    h.poll_threads();
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn futures_run_on_the_thread_executor_and_wake_across_threads() {
    let h = Harness::new(2);
    let t1 = h.handle(1);
    let (tx, rx) = crate::oneshot::channel::<u32>();
    let jh = h.run_on(0, || {
        spawn_local(async move {
            let v = rx.await.unwrap();
            // Not Send: an Rc lives across the await.
            let local = Rc::new(v);
            yield_now().await;
            *local + 1
        })
        .unwrap()
    });
    h.poll_threads();
    assert!(!jh.is_finished());
    t1.send_msg(move || tx.send(41)).unwrap();
    h.poll_threads();
    assert_eq!(jh.try_take(), Some(42));
    // Awaiting a JoinHandle from another task.
    let v = h.block_on(0, async {
        let inner = spawn_local(async { 7 }).unwrap();
        inner.await * 2
    });
    assert_eq!(v, 14);
}

#[test]
fn exit_waits_for_pollers_and_channels_then_releases_everything() {
    let h = Harness::new(2);
    let (created, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let dev = counting_device(&created, &dropped);
    let t1 = h.handle(1);
    // Thread 1 holds a channel and a poller in a thread-local, released on a message.
    thread_local! { static HELD: RefCell<Option<(IoChannel<Ctx>, Poller)>> = const { RefCell::new(None) }; }
    h.run_on(1, || {
        let ch = dev.get_channel().unwrap();
        let p = Poller::register("x", || PollStatus::Idle).unwrap();
        HELD.with(|hd| *hd.borrow_mut() = Some((ch, p)));
    });
    t1.request_exit();
    h.poll_threads();
    assert!(!t1.is_exited(), "still holds a poller and a channel");
    t1.send_msg(|| HELD.with(|hd| drop(hd.borrow_mut().take())))
        .unwrap();
    h.poll_threads();
    assert!(t1.is_exited());
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

/// Thread 1 asked to exit while it keeps a poller for good, past its exit timeout.
fn overdue_exit(h: &Harness) -> ThreadHandle {
    let t1 = h.handle(1);
    let p = h.run_on(1, || Poller::register("leak", || PollStatus::Idle).unwrap());
    std::mem::forget(p);
    t1.request_exit();
    h.poll_threads();
    assert!(!t1.is_exited());
    h.advance_time_us(6_000_000);
    t1
}

#[test]
fn exit_is_forced_after_the_timeout() {
    let h = Harness::new(2);
    let t1 = overdue_exit(&h);
    h.poll_threads();
    assert!(t1.is_exited());
}

#[test]
fn reactors_run_threads_on_their_cores_and_stop_in_order() {
    let avail = crate::app::CpuMask::available();
    let cores = crate::app::CpuMask::from_cores(avail.cores().iter().copied().take(2));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let opts = crate::app::AppOpts {
        cores: cores.clone(),
        ..Default::default()
    };
    let rc = crate::app::start(opts, move || {
        let app = current().unwrap().handle();
        assert_eq!(app.name(), "app_thread");
        let last = *crate::app::cores().unwrap().cores().last().unwrap();
        let mask = crate::app::CpuMask::single(last);
        let s2 = s.clone();
        spawn_thread("worker", Some(&mask), move || {
            let me = current().unwrap();
            s2.lock().unwrap().push(me.handle().core());
            // Ask the app thread to stop the application with rc 3.
            crate::app::app_thread()
                .unwrap()
                .send_msg(|| crate::app::stop(3).unwrap())
                .unwrap();
        })
        .unwrap();
    })
    .unwrap();
    assert_eq!(rc, 3);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[*cores.cores().last().unwrap()]
    );
}

#[test]
fn sleep_waits_for_the_clock() {
    let h = Harness::new(1);
    let jh = h.run_on(0, || {
        spawn_local(async { sleep_us(250).await.unwrap() }).unwrap()
    });
    h.poll_threads();
    assert!(!jh.is_finished());
    h.advance_time_us(249);
    h.poll_threads();
    assert!(!jh.is_finished());
    h.advance_time_us(1);
    h.poll_threads();
    assert!(jh.is_finished());
}

#[test]
fn messages_queued_before_a_forced_exit_still_run() {
    let h = Harness::new(2);
    let t1 = overdue_exit(&h);
    // More than one poll's batch of messages: the poll that forces the exit runs a batch,
    // the exit runs the rest (their senders were told they would run).
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 * MSG_BATCH {
        let r = ran.clone();
        t1.send_msg(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    h.poll_thread(1);
    assert!(t1.is_exited());
    assert_eq!(ran.load(Ordering::SeqCst), 3 * MSG_BATCH);
    assert!(t1.send_msg(|| {}).is_err());
}

#[test]
fn every_accepted_message_runs_when_a_thread_exits_under_a_sender() {
    // A sender on another OS thread races the exit: each message it was told was queued
    // (Ok) runs, none is dropped or stranded.
    for _ in 0..200 {
        let h = Harness::new(2);
        let t1 = h.handle(1);
        let (accepted, ran) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, r, t) = (accepted.clone(), ran.clone(), t1.clone());
        let sender = std::thread::spawn(move || {
            loop {
                // One message at a time, sent as soon as the last one ran: the thread's
                // queue empties (so it may exit) just as the next message comes.
                while r.load(Ordering::SeqCst) < a.load(Ordering::SeqCst) && !t.is_exited() {
                    std::hint::spin_loop();
                }
                let r = r.clone();
                if t.send_msg(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                })
                .is_err()
                {
                    break;
                }
                a.fetch_add(1, Ordering::SeqCst);
            }
        });
        while accepted.load(Ordering::SeqCst) < 20 {
            h.poll_thread(1);
        }
        t1.request_exit();
        while !t1.is_exited() {
            h.poll_thread(1);
        }
        sender.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst));
    }
}

#[test]
fn threads_spawned_while_the_application_stops_exit_with_it() {
    // One thread spawns threads in a loop while the app thread stops the application: a
    // thread listed after the stop's exit sweep, or queued to a reactor about to return,
    // must still exit (before, start() could hang for good).
    let avail = crate::app::CpuMask::available();
    let cores = crate::app::CpuMask::from_cores(avail.cores().iter().copied().take(2));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = crate::app::AppOpts {
            cores,
            ..Default::default()
        };
        let rc = crate::app::start(opts, move || {
            spawn_thread("spawner", None, || {
                crate::app::app_thread()
                    .unwrap()
                    .send_msg(|| crate::app::stop(0).unwrap())
                    .unwrap();
                for i in 0..2000 {
                    if spawn_thread(format!("t{i}"), None, || {}).is_err() {
                        break;
                    }
                }
            })
            .unwrap();
        });
        let _ = tx.send(rc.unwrap());
    });
    let rc = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("app::start returned");
    assert_eq!(rc, 0);
}

#[test]
fn interrupt_mode_sleeps_when_idle_and_wakes_for_messages_timers_and_threads() {
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = crate::app::AppOpts {
        interrupt_mode: true,
        ..Default::default()
    };
    std::thread::spawn(move || {
        let rc = crate::app::start(opts, move || {
            assert!(crate::app::interrupt_mode());
            let app = current().unwrap().handle();
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::gettid() };
            // A timed poller every 2 ms wakes the reactor on time; it leaves after 100 runs.
            let ticks = Arc::new(AtomicUsize::new(0));
            let me: Rc<RefCell<Option<PollerRef>>> = Rc::new(RefCell::new(None));
            let (t2, m) = (ticks.clone(), me.clone());
            let p = Poller::register_us("tick", 2000, move || {
                if t2.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                    if let Some(p) = m.borrow().as_ref() {
                        p.unregister();
                    }
                }
                PollStatus::Busy
            })
            .unwrap();
            *me.borrow_mut() = Some(p.downgrade());
            std::mem::forget(p);
            let app2 = app.clone();
            std::thread::spawn(move || {
                // The first 100 ticks take ~200 ms, mostly asleep.
                let cpu0 = crate::testing::thread_cpu_us(tid).expect("thread CPU time");
                let t0 = std::time::Instant::now();
                while ticks.load(Ordering::SeqCst) < 100 {
                    assert!(t0.elapsed().as_secs() < 10, "the timed poller ran");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let ticks_ms = t0.elapsed().as_millis();
                let used = (crate::testing::thread_cpu_us(tid).expect("thread CPU time") - cpu0)
                    as f64
                    / t0.elapsed().as_micros() as f64;
                // Now nothing is due: the reactor sleeps until something rings. A round
                // trip (a message that spawns a thread that answers) takes far less than
                // the ~5 ms that waiting for the 10 ms cap would, on the median of 20.
                let mut trips = Vec::new();
                for _ in 0..20 {
                    let t1 = std::time::Instant::now();
                    let (mtx, mrx) = std::sync::mpsc::channel();
                    app2.send_msg(move || {
                        spawn_thread("late", None, move || {
                            let _ = mtx.send(());
                        })
                        .unwrap();
                    })
                    .unwrap();
                    mrx.recv_timeout(std::time::Duration::from_secs(5))
                        .expect("the message and the new thread ran");
                    trips.push(t1.elapsed());
                }
                trips.sort();
                let trips = trips[trips.len() / 2];
                app2.send_msg(|| crate::app::stop(0).unwrap()).unwrap();
                let _ = tx.send((used, ticks_ms, trips));
            });
        });
        assert_eq!(rc.unwrap(), 0);
    });
    let (used, ticks_ms, trips) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the app ran");
    assert!(
        used < 0.3,
        "an idle reactor sleeps: {:.0} % of a core",
        used * 100.0
    );
    assert!(
        (150..2000).contains(&ticks_ms),
        "100 runs of a 2 ms poller took {ticks_ms} ms"
    );
    assert!(
        trips < std::time::Duration::from_millis(3),
        "woken by each message, not by the 10 ms sleep cap: median round trip {trips:?}"
    );
}

#[test]
fn thread_info_lists_pollers_and_channels() {
    let h = Harness::new(1);
    let dev = IoDevice::register("dev_info", || Ok(()));
    let (p, ch, ch2, timed) = h.run_on(0, || {
        let p = Poller::register("spin", || PollStatus::Idle).unwrap();
        let timed = Poller::register_us("tick", 1000, || PollStatus::Idle).unwrap();
        let ch = dev.get_channel().unwrap();
        let ch2 = dev.get_channel().unwrap();
        (p, ch, ch2, timed)
    });
    h.poll_threads();
    timed.pause();
    let i = h.run_on(0, || current().unwrap().info());
    assert_eq!(i.io_channels, [("dev_info".to_string(), 2)]);
    assert_eq!(i.active_pollers.len(), 1);
    assert_eq!(i.active_pollers[0].name, "spin");
    assert!(i.active_pollers[0].run_count > 0);
    assert_eq!(i.paused_pollers.len(), 1);
    assert_eq!(i.paused_pollers[0].state, "paused");
    assert_ne!(i.active_pollers[0].id, i.paused_pollers[0].id);
    h.run_on(0, || drop((p, ch, ch2, timed)));
    let i = h.run_on(0, || current().unwrap().info());
    assert!(i.io_channels.is_empty() && i.active_pollers.is_empty());
}

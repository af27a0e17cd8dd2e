//! Interrupt mode with bdevs whose pollers have no fd of their own (null, malloc, delay)
//! and with NVMe/TCP channels: an idle reactor holding channels to them sleeps, and I/O
//! submitted afterwards wakes it and completes.

use std::future::Future;
use std::time::{Duration, Instant};

use bdev_core::app::{self, AppOpts};
use bdev_core::bdev::{BdevChannel, Desc};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::{os_thread_id, thread_cpu_us};
use bdev_core::thread;
use bdev_malloc::malloc::{self, MallocOpts};
use bdev_malloc::null::{self, NullOpts};
use bdev_vbdev::delay::{self, DelayOpts};

/// Runs `body` as a task of an interrupt-mode app's first thread, stops the app, and
/// returns what the task gave.
fn in_interrupt_mode<T, F, Fut>(body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = AppOpts {
            interrupt_mode: true,
            ..Default::default()
        };
        let rc = app::start(opts, move || {
            thread::spawn_local(async move {
                let r = body().await;
                app::stop(0).unwrap();
                let _ = tx.send(r);
            })
            .unwrap();
        });
        assert_eq!(rc.unwrap(), 0);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the app ran")
}

/// Awaits `f` on the reactor's own OS thread; returns its output, how long it took and
/// the share of a core the thread used meanwhile.
async fn measured<T>(f: impl Future<Output = T>) -> (T, Duration, f64) {
    let tid = os_thread_id();
    let cpu0 = thread_cpu_us(tid).expect("thread CPU time");
    let t0 = Instant::now();
    let r = f.await;
    let took = t0.elapsed();
    let used = (thread_cpu_us(tid).expect("thread CPU time") - cpu0) as f64
        / took.as_micros().max(1) as f64;
    (r, took, used)
}

fn delay_opts(base: &str, name: &str, us: u64) -> DelayOpts {
    DelayOpts {
        base_bdev_name: base.into(),
        name: name.into(),
        avg_read_latency: us,
        p99_read_latency: us,
        avg_write_latency: us,
        p99_write_latency: us,
        uuid: None,
    }
}

const BDEVS: [&str; 3] = ["Null0", "Malloc0", "Delay0"];

/// A write and a read back on each bdev; the malloc and delay reads return the data.
async fn io_round(chans: &[(Desc, BdevChannel)], seed: u8) {
    for (name, (desc, ch)) in BDEVS.iter().zip(chans) {
        let mut buf = DmaBuf::page_aligned(4096).unwrap();
        buf.fill(seed);
        let mut buf = desc.write_blocks(ch, buf, 3, 1).await.unwrap();
        buf.fill(0);
        let back = desc.read_blocks(ch, buf, 3, 1).await.unwrap();
        if *name != "Null0" {
            assert!(back.iter().all(|&b| b == seed), "{name}: data read back");
        }
    }
}

#[test]
fn idle_null_malloc_and_delay_channels_let_an_interrupt_mode_reactor_sleep() {
    let (used, again) = in_interrupt_mode(|| async {
        null::create(NullOpts::new("Null0", 1024, 4096)).unwrap();
        malloc::create(MallocOpts::new("Malloc0", 1024, 4096)).unwrap();
        malloc::create(MallocOpts::new("Malloc1", 1024, 4096)).unwrap();
        delay::create(delay_opts("Malloc1", "Delay0", 200)).unwrap();
        let chans: Vec<(Desc, BdevChannel)> = BDEVS
            .iter()
            .map(|n| {
                let d = Desc::open(n, true, |_| {}).unwrap();
                let ch = d.get_io_channel().unwrap();
                (d, ch)
            })
            .collect();
        io_round(&chans, 0x5a).await;
        // The channels stay open, with nothing in flight: the reactor sleeps.
        let (r, _, used) = measured(thread::sleep_us(400_000)).await;
        r.unwrap();
        // Paused pollers resume for new I/O.
        let ((), again, _) = measured(io_round(&chans, 0xa5)).await;
        (used, again)
    });
    assert!(
        used < 0.3,
        "a reactor with idle null, malloc and delay channels sleeps: {:.0} % of a core",
        used * 100.0
    );
    assert!(
        again < Duration::from_secs(2),
        "I/O after the idle spell completed in {again:?}"
    );
}

/// 32 writes and reads of one 4 KiB block, one at a time.
async fn nvme_round(d: &Desc, ch: &BdevChannel) {
    for lba in 0..32 {
        let buf = DmaBuf::page_aligned(4096).unwrap();
        let buf = d.write_blocks(ch, buf, lba, 1).await.unwrap();
        d.read_blocks(ch, buf, lba, 1).await.unwrap();
    }
}

#[test]
fn an_idle_nvme_tcp_channel_lets_an_interrupt_mode_reactor_sleep() {
    // The in-process null target (its own OS threads, not measured).
    let nqn = "nqn.2024-01.io.x:interrupt";
    let addr = bdev_nvme::null_target::spawn(0, nqn).unwrap();
    let (used, again) = in_interrupt_mode(move || async move {
        let o = bdev_nvme::null_target::attach_opts("T", addr, nqn);
        let names = bdev_nvme::bdev::attach(o).await.unwrap();
        let d = Desc::open(&names[0], true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        nvme_round(&d, &ch).await;
        let (r, _, used) = measured(thread::sleep_us(400_000)).await;
        r.unwrap();
        // Woken by the socket: 64 I/Os, each a sleep and a wake-up, in well under the
        // time the 10 ms sleep cap would take.
        let ((), again, _) = measured(nvme_round(&d, &ch)).await;
        (used, again)
    });
    assert!(
        used < 0.3,
        "a reactor with an idle NVMe/TCP channel sleeps: {:.0} % of a core",
        used * 100.0
    );
    assert!(
        again < Duration::from_millis(320),
        "64 I/Os after the idle spell took {again:?}: not woken by the socket?"
    );
}

#[test]
fn a_reactor_sleeps_while_a_delay_bdev_holds_io_and_wakes_at_the_deadline() {
    let (took, used) = in_interrupt_mode(|| async {
        malloc::create(MallocOpts::new("DM", 1024, 4096)).unwrap();
        delay::create(delay_opts("DM", "Slow", 300_000)).unwrap();
        let d = Desc::open("Slow", false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        let buf = DmaBuf::page_aligned(4096).unwrap();
        // Submitted inside the measured span (an awaited I/O starts when it becomes a
        // future).
        let (r, took, used) = measured(async { d.read_blocks(&ch, buf, 0, 1).await }).await;
        r.unwrap();
        (took, used)
    });
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(360),
        "a read held 300 ms took {took:?}"
    );
    assert!(
        used < 0.3,
        "while the delay bdev held the read, the reactor used {:.0} % of a core",
        used * 100.0
    );
}

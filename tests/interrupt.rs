//! Interrupt mode with bdevs whose pollers have no fd to sleep on (null, malloc, delay):
//! their pollers pause while nothing is queued, so a reactor holding channels to them
//! sleeps when idle, and I/O submitted afterwards resumes them and completes.

use std::time::{Duration, Instant};

use bdev_core::app::{self, AppOpts};
use bdev_core::bdev::{BdevChannel, Desc};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::{os_thread_id, thread_cpu_us};
use bdev_core::thread;
use bdev_malloc::malloc::{self, MallocOpts};
use bdev_malloc::null::{self, NullOpts};
use bdev_vbdev::delay::{self, DelayOpts};

const BDEVS: [&str; 3] = ["Null0", "Malloc0", "Delay0"];

/// A write and a read back on each bdev; the malloc and delay reads return the data.
async fn io_round(chans: &[(Desc, BdevChannel)], seed: u8) {
    for (name, (desc, ch)) in BDEVS.iter().zip(chans) {
        let mut buf = DmaBuf::page_aligned(4096).unwrap();
        buf.fill(seed);
        let buf = desc.write_blocks(ch, buf, 3, 1).await.unwrap();
        let mut buf = buf;
        buf.fill(0);
        let back = desc.read_blocks(ch, buf, 3, 1).await.unwrap();
        if *name != "Null0" {
            assert!(back.iter().all(|&b| b == seed), "{name}: data read back");
        }
    }
}

#[test]
fn idle_null_malloc_and_delay_channels_let_an_interrupt_mode_reactor_sleep() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = AppOpts {
            interrupt_mode: true,
            ..Default::default()
        };
        let rc = app::start(opts, move || {
            thread::spawn_local(async move {
                null::create(NullOpts::new("Null0", 1024, 4096)).unwrap();
                malloc::create(MallocOpts::new("Malloc0", 1024, 4096)).unwrap();
                malloc::create(MallocOpts::new("Malloc1", 1024, 4096)).unwrap();
                delay::create(DelayOpts {
                    base_bdev_name: "Malloc1".into(),
                    name: "Delay0".into(),
                    avg_read_latency: 200,
                    p99_read_latency: 200,
                    avg_write_latency: 200,
                    p99_write_latency: 200,
                    uuid: None,
                })
                .unwrap();
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
                let tid = os_thread_id();
                let cpu0 = thread_cpu_us(tid).expect("thread CPU time");
                let t0 = Instant::now();
                thread::sleep_us(400_000).await.unwrap();
                let used = (thread_cpu_us(tid).expect("thread CPU time") - cpu0) as f64
                    / t0.elapsed().as_micros() as f64;
                // Paused pollers resume for new I/O.
                let t1 = Instant::now();
                io_round(&chans, 0xa5).await;
                let again = t1.elapsed();
                drop(chans);
                app::stop(0).unwrap();
                let _ = tx.send((used, again));
            })
            .unwrap();
        });
        assert_eq!(rc.unwrap(), 0);
    });
    let (used, again) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the app ran");
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = AppOpts {
            interrupt_mode: true,
            ..Default::default()
        };
        let rc = app::start(opts, move || {
            thread::spawn_local(async move {
                let o = bdev_nvme::bdev::AttachOpts {
                    name: "T".into(),
                    trtype: "tcp".into(),
                    traddr: "127.0.0.1".into(),
                    trsvcid: Some(addr.port().to_string()),
                    subnqn: Some(nqn.into()),
                    ..Default::default()
                };
                let names = bdev_nvme::bdev::attach(o).await.unwrap();
                let d = Desc::open(&names[0], true, |_| {}).unwrap();
                let ch = d.get_io_channel().unwrap();
                nvme_round(&d, &ch).await;
                let tid = os_thread_id();
                let cpu0 = thread_cpu_us(tid).expect("thread CPU time");
                let t0 = Instant::now();
                thread::sleep_us(400_000).await.unwrap();
                let used = (thread_cpu_us(tid).expect("thread CPU time") - cpu0) as f64
                    / t0.elapsed().as_micros() as f64;
                // Woken by the socket: 64 I/Os, each a sleep and a wake-up, in well
                // under the time the 10 ms sleep cap would take.
                let t1 = Instant::now();
                nvme_round(&d, &ch).await;
                let again = t1.elapsed();
                drop((ch, d));
                app::stop(0).unwrap();
                let _ = tx.send((used, again));
            })
            .unwrap();
        });
        assert_eq!(rc.unwrap(), 0);
    });
    let (used, again) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the app ran");
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = AppOpts {
            interrupt_mode: true,
            ..Default::default()
        };
        let rc = app::start(opts, move || {
            thread::spawn_local(async move {
                malloc::create(MallocOpts::new("DM", 1024, 4096)).unwrap();
                delay::create(DelayOpts {
                    base_bdev_name: "DM".into(),
                    name: "Slow".into(),
                    avg_read_latency: 300_000,
                    p99_read_latency: 300_000,
                    avg_write_latency: 300_000,
                    p99_write_latency: 300_000,
                    uuid: None,
                })
                .unwrap();
                let d = Desc::open("Slow", false, |_| {}).unwrap();
                let ch = d.get_io_channel().unwrap();
                let tid = os_thread_id();
                let cpu0 = thread_cpu_us(tid).expect("thread CPU time");
                let t0 = Instant::now();
                let buf = DmaBuf::page_aligned(4096).unwrap();
                d.read_blocks(&ch, buf, 0, 1).await.unwrap();
                let took = t0.elapsed();
                let used = (thread_cpu_us(tid).expect("thread CPU time") - cpu0) as f64
                    / took.as_micros() as f64;
                drop((ch, d));
                app::stop(0).unwrap();
                let _ = tx.send((used, took));
            })
            .unwrap();
        });
        assert_eq!(rc.unwrap(), 0);
    });
    let (used, took) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the app ran");
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

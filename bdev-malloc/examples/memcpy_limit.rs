//! The malloc bdev's bound on this machine: random 4 KiB copies out of 128 MiB of
//! prefaulted memory (as the malloc bdev holds it) into 32 rotating 4 KiB buffers, for a
//! number of seconds; prints copies per second.
//!
//! `cargo run --release -p bdev-malloc --example memcpy_limit -- [read|write] [seconds]`

use std::time::{Duration, Instant};

use bdev_core::dma::{BlockMem, DmaBuf};

fn main() {
    let mut args = std::env::args().skip(1);
    let write = args.next().as_deref() == Some("write");
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let len = 128usize << 20;
    let mem = BlockMem::new(len, 2 << 20).expect("128 MiB");
    let mut bufs: Vec<DmaBuf> = (0..32)
        .map(|_| DmaBuf::page_aligned(4096).expect("buffer"))
        .collect();
    let mut x: u64 = 88_172_645_463_325_252;
    let mut n: u64 = 0;
    let start = Instant::now();
    let limit = Duration::from_secs(secs);
    while start.elapsed() < limit {
        for _ in 0..1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (len as u64 / 4096)) * 4096;
            let b = &mut bufs[(n % 32) as usize];
            if write {
                mem.write_from(off, b).expect("in range");
            } else {
                mem.read_into(off, b).expect("in range");
            }
            n += 1;
        }
    }
    println!("{:.0} copies/s", n as f64 / start.elapsed().as_secs_f64());
}

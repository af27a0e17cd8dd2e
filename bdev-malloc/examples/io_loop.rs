//! A fixed number of 4 KiB reads on the null bdev at queue depth 128, by callback or by
//! `.await`, for counting instructions per I/O under callgrind (noise-free, unlike time):
//!
//! ```sh
//! cargo build --release -p bdev-malloc --example io_loop
//! for n in 200000 400000; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!   target/release/examples/io_loop callback $n; done   # (Ir(400k) - Ir(200k)) / 200k
//! ```

use bdev_core::testing::{Harness, IoLoop};
use bdev_malloc::null::{self, NullOpts};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "callback".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let h = Harness::new(1);
    null::create(NullOpts::new("Null0", 32768, 4096)).expect("null bdev");
    let l = IoLoop::open("Null0").expect("open");
    if mode == "async" {
        l.start_async(128)
    } else {
        l.start(128, false)
    }
    .expect("start");
    l.run_until(&h, 0, n);
    l.stop(&h);
    println!("{} I/Os", l.done());
}

//! `io_loop` (bdev-malloc's example) through a passthru bdev over the null bdev, for
//! counting what the virtual layer adds per I/O under callgrind:
//!
//! ```sh
//! cargo build --release -p bdev-vbdev --example pt_loop
//! for n in 200000 400000; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!   target/release/examples/pt_loop $n; done   # (Ir(400k) - Ir(200k)) / 200k
//! ```

use bdev_core::testing::{Harness, IoLoop};
use bdev_malloc::null::{self, NullOpts};
use bdev_vbdev::passthru::{self, PassthruOpts};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let h = Harness::new(1);
    h.run_on(0, || {
        null::create(NullOpts::new("Null0", 32768, 4096)).expect("null bdev");
        passthru::create(PassthruOpts {
            base_bdev_name: "Null0".into(),
            name: "PT0".into(),
            uuid: None,
        })
        .expect("passthru bdev");
    });
    let l = IoLoop::open("PT0").expect("open");
    l.start(128, false).expect("start");
    l.run_until(&h, 0, n);
    l.stop(&h);
    println!("{} I/Os", l.done());
}

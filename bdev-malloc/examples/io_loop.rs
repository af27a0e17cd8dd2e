//! A fixed number of 4 KiB reads on the null bdev at queue depth 128, by callback or by
//! `.await`, for counting instructions per I/O under callgrind (noise-free, unlike time):
//!
//! ```sh
//! cargo build --release -p bdev-malloc --example io_loop
//! for n in 200000 400000; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!   target/release/examples/io_loop callback $n; done   # (Ir(400k) - Ir(200k)) / 200k
//! ```

use std::cell::Cell;
use std::rc::Rc;

use bdev_core::bdev::{BdevChannel, Desc};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;
use bdev_core::thread;
use bdev_malloc::null::{self, NullOpts};

struct Loop {
    desc: Desc,
    ch: BdevChannel,
    done: Cell<u64>,
    limit: u64,
}

impl Loop {
    fn read(self: &Rc<Self>, buf: DmaBuf, lba: u64) {
        let me = self.clone();
        self.desc
            .read_blocks(&self.ch, buf, lba, 1)
            .submit(move |c| {
                me.done.set(me.done.get() + 1);
                if me.done.get() < me.limit {
                    me.read(c.payload, (lba + 7919) % 32768);
                }
            });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "callback".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let h = Harness::new(1);
    null::create(NullOpts::new("Null0", 32768, 4096)).unwrap();
    let desc = Desc::open("Null0", true, |_| {}).unwrap();
    let ch = desc.get_io_channel().unwrap();
    let l = Rc::new(Loop {
        desc,
        ch,
        done: Cell::new(0),
        limit: n,
    });
    for t in 0..128u64 {
        let buf = DmaBuf::page_aligned(4096).unwrap();
        if mode == "async" {
            let l2 = l.clone();
            thread::spawn_local(async move {
                let mut buf = buf;
                let mut lba = t;
                while l2.done.get() < l2.limit {
                    buf = match l2.desc.read_blocks(&l2.ch, buf, lba, 1).await {
                        Ok(b) => b,
                        Err(e) => e.payload,
                    };
                    lba = (lba + 7919) % 32768;
                    l2.done.set(l2.done.get() + 1);
                }
            })
            .unwrap();
        } else {
            l.read(buf, t);
        }
    }
    while l.done.get() < n {
        h.poll_thread(0);
    }
    h.poll_threads();
    println!("{} I/Os", l.done.get());
}

//! The null NVMe/TCP target (`bdev_nvme::null_target`) as a process, for benchmarks:
//! bdevperf over NVMe/TCP at host speed, where the kernel target in the emulated guest
//! can't go.
//!
//! `cargo run --release -p bdev-nvme --example tcp_null_target -- [PORT] [NQN]`

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .map(|p| {
            p.parse().unwrap_or_else(|_| {
                eprintln!("tcp_null_target: '{p}' is not a port number");
                std::process::exit(1)
            })
        })
        .unwrap_or(4420);
    let nqn = args
        .next()
        .unwrap_or_else(|| "nqn.2016-06.io.spdk:cnode1".into());
    match bdev_nvme::null_target::spawn(port, &nqn) {
        Ok(a) => eprintln!("tcp_null_target: {nqn} on {a}"),
        Err(e) => {
            eprintln!("tcp_null_target: 127.0.0.1:{port}: {e}");
            std::process::exit(1)
        }
    }
    loop {
        std::thread::park();
    }
}

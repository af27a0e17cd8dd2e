//! bdevd: the stack as a daemon, as SPDK's `spdk_tgt` is for bdevs. Starts reactors
//! (`-m`), loads an SPDK JSON config (`-c`/`--json`), and serves JSON-RPC on a Unix socket
//! (`-r`, default `/var/tmp/spdk.sock`) with SPDK's method names, until
//! `spdk_kill_instance`, SIGINT or SIGTERM stops it in order.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bdev_core::app::CpuMask;
use bdev_core::config::{ConfigFile, Methods};
use bdev_core::thread;
use bdev_rpc::RpcServer;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "bdevd",
    about = "Block-device stack daemon: SPDK JSON config and JSON-RPC"
)]
struct Cli {
    /// Core mask (0x3) or list ([0,1]) of reactors
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// SPDK JSON config to load at start
    #[arg(short = 'c', long = "json", visible_alias = "config")]
    config: Option<PathBuf>,
    /// JSON-RPC Unix socket
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/spdk.sock")]
    rpc_socket: PathBuf,
    /// Reactors sleep when idle instead of polling (SPDK's --interrupt-mode)
    #[arg(long = "interrupt-mode")]
    interrupt_mode: bool,
}

fn main() {
    bdev_examples::init_tracing();
    let cli: Cli = bdev_examples::parse_cli("bdevd");
    let cores: CpuMask = cli
        .cpumask
        .parse()
        .unwrap_or_else(|e: bdev_core::Error| bdev_examples::fail("bdevd", &e.to_string()));
    let (cfg, bdev_opts) = bdev_examples::load_config("bdevd", cli.config.as_deref());
    let stop = bdev_examples::stop_flag("bdevd");
    let socket = cli.rpc_socket.clone();
    bdev_examples::run_app(
        "bdevd",
        cores,
        cli.interrupt_mode,
        bdev_opts,
        move || async move { serve(cfg, socket, stop).await.map(|()| 0) },
    )
}

/// The methods bdevd serves: the bdev layer's, each module's, and the application's own.
fn methods(stop: Arc<AtomicBool>) -> Result<Rc<Methods>, String> {
    let mut m = Methods::new();
    bdev_examples::register_modules(&mut m)?;
    bdev_examples::app_rpc::register_app_methods(&mut m, stop);
    bdev_examples::app_rpc::register_rpc_get_methods(&mut m);
    Ok(Rc::new(m))
}

async fn serve(
    cfg: Option<ConfigFile>,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let m = methods(stop.clone())?;
    if let Some(c) = cfg {
        let r = c.load(&m).await.map_err(|e| e.to_string());
        // Its key material need not outlive the loading.
        c.wipe();
        r?;
    }
    let server = Rc::new(RefCell::new(Some(
        RpcServer::listen(&socket, m).map_err(|e| e.to_string())?,
    )));
    while !stop.load(Ordering::Relaxed) {
        let _ = thread::sleep_us(20_000).await;
    }
    // Let the answer to spdk_kill_instance go out, then close the socket.
    let _ = thread::sleep_us(5_000).await;
    server.borrow_mut().take();
    tracing::info!("shutting down");
    Ok(())
}

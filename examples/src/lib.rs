//! Startup shared by the example binaries (bdevperf, bdevd): logging to stderr, the SPDK
//! config file (read before the reactors start, for `bdev_set_options`), SIGINT/SIGTERM as
//! a flag the app thread polls, and one async main run on the app thread until it returns
//! the exit code. Every failure is one line on stderr and exit code 1.

pub mod app_rpc;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bdev_core::app::{self, AppOpts, CpuMask};
use bdev_core::bdev::BdevOpts;
use bdev_core::config::ConfigFile;
use bdev_core::thread;

/// Adds every module this project has (malloc/null, passthru/error/delay, aio/uring, raid,
/// crypto, nvme) to the current application and their methods to `m`: the one list the
/// binaries share.
pub fn register_modules(m: &mut bdev_core::config::Methods) -> Result<(), String> {
    let e = |e: bdev_core::Error| e.to_string();
    bdev_malloc::register(m).map_err(e)?;
    bdev_vbdev::register(m).map_err(e)?;
    bdev_aio::register(m).map_err(e)?;
    bdev_raid::register(m).map_err(e)?;
    bdev_crypto::register(m).map_err(e)?;
    bdev_nvme::register(m).map_err(e)
}

/// Prints `name: msg` and exits with 1.
pub fn fail(name: &str, msg: &str) -> ! {
    eprintln!("{name}: {msg}");
    std::process::exit(1);
}

/// Logs to stderr, `warn` and above unless `RUST_LOG` says otherwise; the filter can be
/// changed at run time by the `log_*` methods ([`app_rpc`]).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let env = std::env::var("RUST_LOG").ok();
    let filter = env
        .as_deref()
        .and_then(|e| tracing_subscriber::EnvFilter::try_new(e).ok())
        .unwrap_or_else(|| "warn".into());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let r = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    if r.is_ok() {
        app_rpc::set_log_handle(handle, env.as_deref());
    }
}

/// Parses the command line: help and version print and exit 0; an error is one line.
pub fn parse_cli<C: clap::Parser>(name: &str) -> C {
    match C::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            std::process::exit(0);
        }
        Err(e) => {
            let msg = e.to_string();
            fail(
                name,
                msg.lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: "),
            )
        }
    }
}

/// Reads the config file, if any, and the bdev options it sets.
pub fn load_config(name: &str, path: Option<&Path>) -> (Option<ConfigFile>, BdevOpts) {
    let Some(path) = path else {
        return (None, BdevOpts::default());
    };
    let cfg = ConfigFile::read(path).unwrap_or_else(|e| fail(name, &e.to_string()));
    let opts = match cfg.bdev_opts() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => fail(name, &e.to_string()),
    };
    (Some(cfg), opts)
}

/// A flag SIGINT and SIGTERM set (the process keeps running to shut down in order).
pub fn stop_flag(name: &str) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            fail(name, &format!("installing signal handler: {e}"));
        }
    }
    flag
}

/// Starts reactors on `cores` (sleeping when idle with `interrupt_mode`, SPDK's
/// `--interrupt-mode`), runs `main` on the app thread, stops the application with its exit
/// code (an error is printed and gives 1), and exits the process with it.
pub fn run_app<F, Fut>(
    name: &'static str,
    cores: CpuMask,
    interrupt_mode: bool,
    bdev: BdevOpts,
    main: F,
) -> !
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<i32, String>> + 'static,
{
    let opts = AppOpts {
        name: name.into(),
        cores,
        bdev,
        interrupt_mode,
    };
    let rc = app::start(opts, move || {
        let spawned = thread::spawn_local(async move {
            let rc = main().await.unwrap_or_else(|e| {
                eprintln!("{name}: {e}");
                1
            });
            let _ = app::stop(rc);
        });
        if spawned.is_err() {
            let _ = app::stop(1);
        }
    });
    match rc {
        Ok(rc) => std::process::exit(rc),
        Err(e) => fail(name, &e.to_string()),
    }
}

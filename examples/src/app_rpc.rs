//! The methods SPDK's application framework serves next to the modules' (lib/event,
//! lib/init, lib/rpc), shared by `bdevd` and `bdevperf -z`, so that SPDK's `scripts/rpc.py`
//! and test scripts work unchanged: `waitforlisten` polls `rpc_get_methods`, `rpc.py
//! save_config` walks `framework_get_subsystems` and `framework_get_config`, and `rpc.py
//! load_config` checks every method of a file against `rpc_get_methods`, then calls those
//! that `rpc_get_methods {"current": true}` lists.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bdev_core::Error;
use bdev_core::config::{self, Methods, parse_params};
use serde_json::{Value, json};

/// Startup-only methods (`SPDK_RPC_STARTUP`) of SPDK subsystems this stack does not have,
/// which SPDK's saved configs carry with their defaults (`iobuf`, `sock`, `accel`, `nvmf`,
/// `iscsi`). Known, so that `rpc.py load_config` of such a file does not stop on them; never
/// current, so it skips them ("Some configs were skipped because the RPC state that can
/// call them passed over"), as against a running SPDK; called directly, they answer SPDK's
/// -1. A config file (`-c`) skips the subsystems it lacks with a warning, and runs the
/// accel ones as no-ops, with a warning.
const FOREIGN_STARTUP: &[&str] = &[
    "iobuf_set_options",
    "sock_set_default_impl",
    "sock_impl_set_options",
    "accel_set_options",
    "accel_assign_opc",
    "nvmf_set_config",
    "nvmf_set_max_subsystems",
    "nvmf_set_crdt",
    "iscsi_set_options",
];

/// SPDK's -32602 (invalid params) with `message`.
fn invalid_params(message: impl Into<String>) -> Error {
    Error::Rpc {
        code: -32602,
        message: message.into(),
    }
}

/// SPDK's -32603 (internal error) with `message`.
fn internal(message: impl Into<String>) -> Error {
    Error::Rpc {
        code: -32603,
        message: message.into(),
    }
}

/// A method SPDK defines with no params: anything but none or `null` is refused with
/// SPDK's message.
fn no_params(method: &str, p: &Option<Value>) -> Result<(), Error> {
    match p {
        None | Some(Value::Null) => Ok(()),
        // Each SPDK handler words it its own way.
        Some(_) => Err(invalid_params(match method {
            "framework_get_reactors" => format!("`{method}` requires no arguments"),
            "spdk_get_version" => format!("{method} method requires no parameters"),
            m if m.starts_with("log_") => format!("{method} requires no parameters"),
            _ => format!("'{method}' requires no arguments"),
        })),
    }
}

/// The subsystems and what each depends on, in init order (`framework_get_subsystems`).
fn subsystems() -> Value {
    json!([
        {"subsystem": "accel", "depends_on": []},
        {"subsystem": "bdev", "depends_on": ["accel"]},
    ])
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// What the `log_*` methods control: the stderr filter, rebuilt from SPDK's print level and
/// log flags at each change.
struct LogState {
    handle: FilterHandle,
    print_level: &'static str,
    /// SPDK's syslog level: kept and reported, as nothing here logs to syslog.
    level: &'static str,
    flags: BTreeSet<&'static str>,
}

static LOG: OnceLock<Mutex<LogState>> = OnceLock::new();

/// SPDK's levels, most severe first, with the tracing level each prints from. NOTICE has
/// no tracing twin: it prints what INFO does.
const LEVELS: [(&str, &str); 5] = [
    ("ERROR", "error"),
    ("WARNING", "warn"),
    ("NOTICE", "info"),
    ("INFO", "info"),
    ("DEBUG", "info"),
];

/// SPDK's log flags this stack has, with the code (tracing targets) each stands for. As
/// SPDK's `SPDK_DEBUGLOG`, a flag's debug messages print only at print level DEBUG.
const FLAGS: [(&str, &[&str]); 17] = [
    ("bdev", &["bdev_core::bdev"]),
    ("thread", &["bdev_core::thread"]),
    ("reactor", &["bdev_core::app"]),
    ("rpc", &["bdev_rpc"]),
    ("bdev_malloc", &["bdev_malloc::malloc"]),
    ("bdev_null", &["bdev_malloc::null"]),
    (
        "aio",
        &["bdev_aio::aio", "bdev_aio::bdev", "bdev_aio::file"],
    ),
    (
        "uring",
        &["bdev_aio::uring", "bdev_aio::bdev", "bdev_aio::file"],
    ),
    ("bdev_nvme", &["bdev_nvme"]),
    (
        "nvme",
        &["bdev_nvme::tcp", "bdev_nvme::ctrlr", "bdev_nvme::discovery"],
    ),
    ("bdev_raid", &["bdev_raid"]),
    ("bdev_raid_sb", &["bdev_raid::sb"]),
    ("vbdev_passthru", &["bdev_vbdev::passthru"]),
    ("vbdev_delay", &["bdev_vbdev::delay"]),
    ("vbdev_error", &["bdev_vbdev::error"]),
    ("vbdev_crypto", &["bdev_crypto"]),
    ("accel", &["bdev_crypto::keys"]),
];

/// Hands the filter's reload handle to the `log_*` methods (`init_tracing` calls it).
/// `rust_log` is the filter it started from: its level, if it is one, is the print level.
pub fn set_log_handle(handle: FilterHandle, rust_log: Option<&str>) {
    let print_level = rust_log
        .and_then(|l| match l.to_ascii_lowercase().as_str() {
            "error" => Some("ERROR"),
            "warn" => Some("WARNING"),
            "info" => Some("INFO"),
            "debug" | "trace" => Some("DEBUG"),
            _ => None,
        })
        .unwrap_or("WARNING");
    let _ = LOG.set(Mutex::new(LogState {
        handle,
        print_level,
        level: "NOTICE",
        flags: BTreeSet::new(),
    }));
}

fn log_state() -> Result<std::sync::MutexGuard<'static, LogState>, Error> {
    let m = LOG
        .get()
        .ok_or_else(|| internal("logging is not set up in this process"))?;
    Ok(m.lock().unwrap_or_else(|e| e.into_inner()))
}

impl LogState {
    /// Rebuilds the filter from the print level and the flags.
    fn apply(&self) -> Result<(), Error> {
        let base = LEVELS
            .iter()
            .find(|(n, _)| *n == self.print_level)
            .map_or("warn", |(_, t)| *t);
        let mut d = base.to_string();
        if self.print_level == "DEBUG" {
            for (_, targets) in FLAGS.iter().filter(|(f, _)| self.flags.contains(f)) {
                for t in *targets {
                    d.push_str(&format!(",{t}=debug"));
                }
            }
        }
        let f = tracing_subscriber::EnvFilter::try_new(&d)
            .map_err(|e| Error::invalid("log filter", e.to_string()))?;
        self.handle
            .reload(f)
            .map_err(|e| internal(format!("reloading the log filter: {e}")))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelParams {
    level: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagParams {
    flag: String,
}

/// SPDK's level name for `l` (any case), or its "invalid log level".
fn level_of(method: &str, p: Option<Value>) -> Result<&'static str, Error> {
    let p: LevelParams = parse_params(method, p)?;
    LEVELS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| n.eq_ignore_ascii_case(&p.level))
        .ok_or_else(|| invalid_params("invalid log level"))
}

/// The flags `flag` names, or SPDK's "invalid log flag": a name in any case, "all", or a
/// prefix pattern ("vbdev_*"), as SPDK matches them.
fn flags_of(method: &str, p: Option<Value>) -> Result<Vec<&'static str>, Error> {
    let p: FlagParams = parse_params(method, p)?;
    let want = p.flag.to_ascii_lowercase();
    let hit = |f: &str| match want.strip_suffix('*') {
        _ if want == "all" => true,
        Some(prefix) => f.starts_with(prefix),
        None => f == want,
    };
    let l: Vec<&'static str> = FLAGS.iter().map(|(f, _)| *f).filter(|f| hit(f)).collect();
    if l.is_empty() {
        return Err(invalid_params("invalid log flag"));
    }
    Ok(l)
}

/// A thread's core mask as SPDK prints it (`spdk_cpuset_fmt`: hex, no "0x").
fn mask_of(core: u32) -> String {
    bdev_core::app::CpuMask::single(core)
        .to_string()
        .trim_start_matches("0x")
        .to_string()
}

/// user, system and irq time of `core` from /proc/stat (zeros if unreadable), as SPDK's
/// framework_get_reactors reports them.
fn proc_stat(core: u32) -> (u64, u64, u64) {
    let tag = format!("cpu{core}");
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(tag.as_str())).then(|| {
                    let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
                    let g = |i: usize| v.get(i).copied().unwrap_or(0);
                    (g(0), g(2), g(5))
                })
            })
        })
        .unwrap_or_default()
}

/// spdk_top's methods: thread_get_stats, thread_get_pollers, thread_get_io_channels,
/// framework_get_reactors, with exactly SPDK's keys (spdk_top decodes them strictly).
fn register_introspection(m: &mut Methods) {
    use bdev_core::thread::{self, PollerInfo, ThreadInfo};
    /// A `thread_get_*` method: no params; `{"tick_rate", "threads": [entry(thread)...]}`.
    fn per_thread(m: &mut Methods, name: &'static str, entry: fn(ThreadInfo) -> Value) {
        m.register(name, move |p| {
            Box::pin(async move {
                no_params(name, &p)?;
                let threads: Vec<Value> = thread::threads_info()
                    .await?
                    .into_iter()
                    .map(entry)
                    .collect();
                Ok(json!({"tick_rate": thread::ticks_hz(), "threads": threads}))
            })
        });
    }
    per_thread(m, "thread_get_stats", |t| {
        json!({
            "name": t.name, "id": t.id, "cpumask": mask_of(t.core),
            "busy": t.stats.busy_ticks, "idle": t.stats.idle_ticks,
            "active_pollers_count": t.active_pollers.len(),
            "timed_pollers_count": t.timed_pollers.len(),
            "paused_pollers_count": t.paused_pollers.len(),
        })
    });
    per_thread(m, "thread_get_pollers", |t| {
        let l = |v: Vec<PollerInfo>| serde_json::to_value(v).unwrap_or(Value::Null);
        json!({
            "name": t.name, "id": t.id,
            "active_pollers": l(t.active_pollers),
            "timed_pollers": l(t.timed_pollers),
            "paused_pollers": l(t.paused_pollers),
        })
    });
    // SPDK's thread entries here have no id.
    per_thread(m, "thread_get_io_channels", |t| {
        let ch: Vec<Value> = t
            .io_channels
            .iter()
            .map(|(n, r)| json!({"name": n, "ref": r}))
            .collect();
        json!({"name": t.name, "io_channels": ch})
    });
    m.register("framework_get_reactors", |p| {
        Box::pin(async move {
            no_params("framework_get_reactors", &p)?;
            let threads = thread::threads_info().await?;
            let reactors: Vec<Value> = bdev_core::app::reactors_info()
                .into_iter()
                .map(|r| {
                    let (usr, sys, irq) = proc_stat(r.lcore);
                    let lw: Vec<Value> = threads
                        .iter()
                        .filter(|t| t.core == r.lcore)
                        .map(|t| {
                            json!({"name": t.name, "id": t.id, "cpumask": mask_of(t.core),
                                "elapsed": t.elapsed})
                        })
                        .collect();
                    json!({
                        "lcore": r.lcore, "tid": r.tid, "busy": r.busy, "idle": r.idle,
                        "in_interrupt": r.in_interrupt, "irq": irq, "sys": sys, "usr": usr,
                        "lw_threads": lw,
                    })
                })
                .collect();
            Ok(json!({
                "tick_rate": thread::ticks_hz(),
                "pid": std::process::id(),
                "reactors": reactors,
            }))
        })
    });
}

fn register_log_methods(m: &mut Methods) {
    m.register_sync("log_set_print_level", |p| {
        let l = level_of("log_set_print_level", p)?;
        let mut st = log_state()?;
        st.print_level = l;
        st.apply()?;
        Ok(Value::Bool(true))
    });
    m.register_sync("log_get_print_level", |p| {
        no_params("log_get_print_level", &p)?;
        Ok(Value::from(log_state()?.print_level))
    });
    m.register_sync("log_set_level", |p| {
        let l = level_of("log_set_level", p)?;
        log_state()?.level = l;
        Ok(Value::Bool(true))
    });
    m.register_sync("log_get_level", |p| {
        no_params("log_get_level", &p)?;
        Ok(Value::from(log_state()?.level))
    });
    m.register_sync("log_set_flag", |p| {
        let fl = flags_of("log_set_flag", p)?;
        let mut st = log_state()?;
        st.flags.extend(fl);
        st.apply()?;
        Ok(Value::Bool(true))
    });
    m.register_sync("log_clear_flag", |p| {
        let fl = flags_of("log_clear_flag", p)?;
        let mut st = log_state()?;
        for f in fl {
            st.flags.remove(f);
        }
        st.apply()?;
        Ok(Value::Bool(true))
    });
    m.register_sync("log_get_flags", |p| {
        no_params("log_get_flags", &p)?;
        let st = log_state()?;
        Ok(Value::Object(
            FLAGS
                .iter()
                .map(|(f, _)| (f.to_string(), Value::Bool(st.flags.contains(f))))
                .collect(),
        ))
    });
}

/// Registers the application's methods. `stop` is the flag `spdk_kill_instance` sets.
/// Call [`register_rpc_get_methods`] after every other registration.
pub fn register_app_methods(m: &mut Methods, stop: Arc<AtomicBool>) {
    m.register_sync("spdk_get_version", |p| {
        no_params("spdk_get_version", &p)?;
        // SPDK's form first: tools match `^SPDK v(\d+)\.(\d+)` on it.
        Ok(json!({
            "version": format!("SPDK v24.09 (bdev-rs v{})", env!("CARGO_PKG_VERSION")),
            "fields": {"major": 24, "minor": 9, "patch": 0, "suffix": ""}
        }))
    });
    // The config is loaded before the socket opens, so init is always complete here.
    m.register_sync("framework_wait_init", |_| Ok(Value::Bool(true)));
    m.register_sync("framework_get_subsystems", |p| {
        no_params("framework_get_subsystems", &p)?;
        Ok(subsystems())
    });
    m.register_sync("framework_get_config", |p| {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            name: String,
        }
        let p: P = parse_params("framework_get_config", p)?;
        if !subsystems()
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["subsystem"] == p.name.as_str()))
        {
            return Err(invalid_params(format!("Subsystem '{}' not found", p.name)));
        }
        // A subsystem that writes nothing answers null, as SPDK's does.
        let all = config::save_config();
        Ok(all["subsystems"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["subsystem"] == p.name.as_str()))
            .map(|s| s["config"].clone())
            .unwrap_or(Value::Null))
    });
    // Ours: the whole config in one call (what `rpc.py save_config` assembles).
    m.register_sync("save_config", |_| Ok(config::save_config()));
    m.register_sync("spdk_kill_instance", move |p| {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            sig_name: String,
        }
        let p: P = parse_params("spdk_kill_instance", p)?;
        match p.sig_name.as_str() {
            "SIGINT" | "SIGTERM" | "SIGQUIT" | "SIGHUP" | "SIGKILL" | "SIGUSR1" | "2" | "15"
            | "3" | "1" | "9" | "10" => {}
            s => {
                return Err(invalid_params(format!(
                    "Invalid parameters: unknown signal {s}"
                )));
            }
        }
        stop.store(true, Ordering::Relaxed);
        Ok(Value::Bool(true))
    });
    // Reactors never move threads: SPDK's static scheduler is what runs.
    m.register_sync("framework_set_scheduler", |p| {
        #[derive(serde::Deserialize)]
        struct P {
            name: String,
        }
        let p: P = parse_params("framework_set_scheduler", p)?;
        if p.name != "static" {
            return Err(internal(format!(
                "scheduler {} is not supported (only static)",
                p.name
            )));
        }
        Ok(Value::Bool(true))
    });
    register_log_methods(m);
    register_introspection(m);
    for &name in FOREIGN_STARTUP {
        m.register_startup(name, move |_| {
            tracing::warn!(method = name, "not used by this stack, ignored");
            Ok(Value::Bool(true))
        });
    }
}

/// Registers `rpc_get_methods` over every method registered so far (and itself):
/// `{"current": true}` leaves out the startup-only ones; there are no aliases.
pub fn register_rpc_get_methods(m: &mut Methods) {
    let mut all: Vec<String> = m.names().map(str::to_string).collect();
    all.push("rpc_get_methods".into());
    all.sort();
    let current: Vec<String> = all
        .iter()
        .filter(|n| m.is_current(n) || *n == "rpc_get_methods")
        .cloned()
        .collect();
    m.register_sync("rpc_get_methods", move |p| {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            #[serde(default)]
            current: bool,
            #[serde(default)]
            #[allow(dead_code)]
            include_aliases: bool,
        }
        let p: P = parse_params("rpc_get_methods", p)?;
        Ok(json!(if p.current { &current } else { &all }))
    });
}

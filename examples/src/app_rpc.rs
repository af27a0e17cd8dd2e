//! The methods SPDK's application framework serves next to the modules' (lib/event,
//! lib/init, lib/rpc), shared by `bdevd` and `bdevperf -z`, so that SPDK's `scripts/rpc.py`
//! and test scripts work unchanged: `waitforlisten` polls `rpc_get_methods`, `rpc.py
//! save_config` walks `framework_get_subsystems` and `framework_get_config`, and `rpc.py
//! load_config` checks every method of a file against `rpc_get_methods`, then calls those
//! that `rpc_get_methods {"current": true}` lists.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bdev_core::Error;
use bdev_core::config::{self, Methods, parse_params};
use serde_json::{Value, json};

/// Startup-only methods (`SPDK_RPC_STARTUP`) of SPDK subsystems this stack does not have,
/// which SPDK's saved configs carry (`iobuf`, `sock`, `accel`). Known, so that `rpc.py
/// load_config` of such a file does not stop on them; never current, so it skips them ("Some
/// configs were skipped because the RPC state that can call them passed over"), as against
/// a running SPDK; called directly, they answer SPDK's -1. A config file (`-c`) skips their
/// subsystems with a warning.
const FOREIGN_STARTUP: &[&str] = &[
    "iobuf_set_options",
    "sock_set_default_impl",
    "sock_impl_set_options",
    "accel_set_options",
    "accel_assign_opc",
];

/// A method SPDK defines with no params: anything but none or `null` is refused with
/// SPDK's message.
fn no_params(method: &str, p: &Option<Value>) -> Result<(), Error> {
    match p {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(Error::Rpc {
            code: -32602,
            message: format!("'{method}' requires no arguments"),
        }),
    }
}

/// The subsystems and what each depends on, in init order (`framework_get_subsystems`).
fn subsystems() -> Value {
    json!([
        {"subsystem": "accel", "depends_on": []},
        {"subsystem": "bdev", "depends_on": ["accel"]},
    ])
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
        let p: P = parse_params("framework_get_config", p).map_err(|_| Error::Rpc {
            code: -32602,
            message: "Invalid arguments".into(),
        })?;
        if !subsystems()
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["subsystem"] == p.name.as_str()))
        {
            return Err(Error::Rpc {
                code: -32602,
                message: format!("Subsystem '{}' not found", p.name),
            });
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
                return Err(Error::invalid(
                    "params of spdk_kill_instance",
                    format!("unknown signal {s}"),
                ));
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
            return Err(Error::invalid(
                "framework_set_scheduler",
                format!("scheduler {} is not supported (only static)", p.name),
            ));
        }
        Ok(Value::Bool(true))
    });
    for name in FOREIGN_STARTUP {
        m.register_startup(name, |_| Ok(Value::Bool(true)));
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
        let p: P = parse_params("rpc_get_methods", p).map_err(|_| Error::Rpc {
            code: -32602,
            message: "Invalid parameters".into(),
        })?;
        Ok(json!(if p.current { &current } else { &all }))
    });
}

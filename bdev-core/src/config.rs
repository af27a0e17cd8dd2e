//! SPDK-format JSON configuration:
//! `{"subsystems":[{"subsystem":"bdev","config":[{"method":..., "params":{...}}]}]}`.
//!
//! Methods are looked up in a [`Methods`] table that each module crate fills with its
//! config/RPC methods (`methods.add_module(...)`, see [`crate::module`]); a method only
//! deserialises its params into the module's typed options and calls its `create`.
//! Subsystems other than `bdev` are skipped with a warning; in `bdev`, an unknown or failing
//! method stops the load with an error naming it, its index and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bdev::BdevOpts;
use crate::error::{Error, Result};

/// A whole config file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigFile {
    /// The subsystems, in order.
    pub subsystems: Vec<SubsystemConfig>,
}

/// One subsystem's section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SubsystemConfig {
    /// Its name ("bdev", "accel", ...).
    pub subsystem: String,
    /// Its method calls (SPDK writes `null` for an empty subsystem).
    #[serde(default)]
    pub config: Option<Vec<MethodCall>>,
}

/// One method call.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MethodCall {
    /// Method name.
    pub method: String,
    /// Its params object, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

/// What a method returns, possibly after waiting.
pub type MethodFuture = Pin<Box<dyn Future<Output = Result<Value>>>>;
type MethodFn = Box<dyn Fn(Option<Value>) -> MethodFuture>;

/// The methods an application knows, by name.
#[derive(Default)]
pub struct Methods {
    map: BTreeMap<String, MethodFn>,
    /// Methods that only a config file may call (SPDK's `SPDK_RPC_STARTUP`): options that
    /// apply before the application starts. Over RPC they answer SPDK's -1.
    startup: std::collections::BTreeSet<String>,
}

/// The message SPDK gives a startup-only method called over RPC once running.
pub const STARTUP_ONLY: &str = "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC.";

impl fmt::Debug for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

impl Methods {
    /// The bdev layer's own methods (`bdev_set_options`, `bdev_wait_for_examine`).
    pub fn new() -> Self {
        let mut m = Methods::default();
        // Applied before the application starts (see ConfigFile::bdev_opts); at load
        // time only checked.
        m.register_startup("bdev_set_options", |p| {
            let _: BdevOpts = parse_params("bdev_set_options", p)?;
            Ok(Value::Bool(true))
        });
        // With a name and `timeout` (ms), waits up to that long for the bdev to appear, as
        // SPDK's does (its test scripts' waitforbdev relies on it).
        m.register("bdev_get_bdevs", |p| {
            Box::pin(async move {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    name: Option<String>,
                    #[serde(default)]
                    timeout: u64,
                }
                let p: P = parse_params("bdev_get_bdevs", p)?;
                let bdevs = match p.name {
                    Some(n) => {
                        // On the thread's clock, which the sleep below follows too.
                        let t = crate::thread::current_or("bdev_get_bdevs")?;
                        let until = t
                            .now()
                            .saturating_add(p.timeout.saturating_mul(t.ticks_hz()) / 1000);
                        loop {
                            if let Some(b) = crate::bdev::get_by_name(&n) {
                                break vec![b];
                            }
                            if crate::thread::now() >= until {
                                return Err(Error::NoSuchBdev { name: n });
                            }
                            crate::thread::sleep_us(1000).await?;
                        }
                    }
                    None => crate::bdev::list(),
                };
                Ok(Value::Array(bdevs.iter().map(bdev_info).collect()))
            })
        });
        m.register_sync("bdev_examine", |p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                name: String,
            }
            let p: P = parse_params("bdev_examine", p)?;
            crate::module::examine_by_name(&p.name)?;
            Ok(Value::Bool(true))
        });
        m.register("bdev_reset_iostat", |p| {
            Box::pin(async move {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    name: Option<String>,
                    mode: Option<String>,
                }
                let p: P = parse_params("bdev_reset_iostat", p)?;
                let mode = match p.mode.as_deref() {
                    None | Some("all") => crate::bdev::ResetMode::All,
                    Some("maxmin") => crate::bdev::ResetMode::MaxMin,
                    // SPDK's decoder refuses it: a decode failure.
                    Some(m) => {
                        return Err(Error::Decode {
                            method: "bdev_reset_iostat".into(),
                            reason: format!("mode must be all or maxmin, not {m}"),
                        });
                    }
                };
                for b in named_or_all(p.name)? {
                    b.reset_iostat(mode).await?;
                }
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_get_iostat", |p| {
            Box::pin(async move {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    name: Option<String>,
                    #[serde(default)]
                    per_channel: bool,
                }
                let p: P = parse_params("bdev_get_iostat", p)?;
                let hz = crate::thread::ticks_hz();
                if p.per_channel {
                    let Some(n) = p.name else {
                        return Err(Error::invalid("bdev_get_iostat", "per_channel needs a bdev name"));
                    };
                    let b = bdev_named(n)?;
                    let mut channels = Vec::new();
                    for (id, st) in b.iostat_per_channel().await? {
                        let mut v = serde_json::to_value(st).map_err(|e| Error::Config(e.to_string()))?;
                        if let Some(o) = v.as_object_mut() {
                            o.remove("io_error");
                            o.insert("thread_id".into(), Value::from(id));
                        }
                        channels.push(v);
                    }
                    return Ok(serde_json::json!({"tick_rate": hz, "ticks": crate::thread::now(), "name": b.name(), "channels": channels}));
                }
                let bdevs = named_or_all(p.name)?;
                let mut out = Vec::new();
                for b in bdevs {
                    let mut v = serde_json::to_value(b.iostat().await?).map_err(|e| Error::Config(e.to_string()))?;
                    v["name"] = Value::String(b.name().to_string());
                    out.push(v);
                }
                Ok(serde_json::json!({"tick_rate": hz, "ticks": crate::thread::now(), "bdevs": out}))
            })
        });
        m.register("bdev_set_qos_limit", |p| {
            Box::pin(async move {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    name: String,
                    rw_ios_per_sec: Option<u64>,
                    rw_mbytes_per_sec: Option<u64>,
                    r_mbytes_per_sec: Option<u64>,
                    w_mbytes_per_sec: Option<u64>,
                }
                let p: P = parse_params("bdev_set_qos_limit", p)?;
                let b = bdev_named(p.name)?;
                let l = [
                    p.rw_ios_per_sec,
                    p.rw_mbytes_per_sec,
                    p.r_mbytes_per_sec,
                    p.w_mbytes_per_sec,
                ];
                if l.iter().all(|x| x.is_none()) {
                    return Err(Error::Rpc {
                        code: -libc::EINVAL,
                        message: "No rate limits specified".into(),
                    });
                }
                b.set_qos_limits(l).await?;
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_enable_histogram", |p| {
            Box::pin(async move {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    name: String,
                    enable: bool,
                    opc: Option<String>,
                }
                let p: P = parse_params("bdev_enable_histogram", p)?;
                let b = bdev_named(p.name)?;
                let opc = match p.opc.as_deref() {
                    None => None,
                    Some(o) => {
                        Some(crate::bdev::IoType::from_name(o).ok_or_else(|| Error::Rpc {
                            code: -32603,
                            message: format!("Invalid Io type: {o}"),
                        })?)
                    }
                };
                b.enable_histogram(p.enable, opc).await?;
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_get_histogram", |p| {
            Box::pin(async move {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    name: String,
                }
                let p: P = parse_params("bdev_get_histogram", p)?;
                let b = bdev_named(p.name)?;
                // SPDK answers -EFAULT's text as an internal error.
                let h = b.histogram().await?.ok_or_else(|| Error::Rpc {
                    code: -32603,
                    message: format!("Bad address: histogram is not enabled on bdev {}", b.name()),
                })?;
                Ok(serde_json::json!({
                    "histogram": h.to_base64(),
                    "bucket_shift": crate::bdev::HISTOGRAM_BUCKET_SHIFT,
                    "tsc_rate": crate::thread::ticks_hz(),
                }))
            })
        });
        m.register("bdev_wait_for_examine", |p| {
            Box::pin(async move {
                // SPDK refuses any params, `{}` too.
                if p.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(Error::Rpc {
                        code: -32602,
                        message: "bdev_wait_for_examine requires no parameters".into(),
                    });
                }
                crate::module::wait_for_examine().await;
                Ok(Value::Bool(true))
            })
        });
        m
    }

    /// Adds an asynchronous method.
    pub fn register(&mut self, name: &str, f: impl Fn(Option<Value>) -> MethodFuture + 'static) {
        self.map.insert(name.to_string(), Box::new(f));
    }

    /// Adds a method that finishes at once.
    pub fn register_sync(
        &mut self,
        name: &str,
        f: impl Fn(Option<Value>) -> Result<Value> + 'static,
    ) {
        self.map.insert(
            name.to_string(),
            Box::new(move |p| {
                let r = f(p);
                Box::pin(async move { r })
            }),
        );
    }

    /// Adds a startup-only method (see [`Methods::call_rpc`]).
    pub fn register_startup(
        &mut self,
        name: &str,
        f: impl Fn(Option<Value>) -> Result<Value> + 'static,
    ) {
        self.register_sync(name, f);
        self.startup.insert(name.to_string());
    }

    /// Whether a method may be called over RPC now (`rpc_get_methods` `current`).
    pub fn is_current(&self, name: &str) -> bool {
        self.map.contains_key(name) && !self.startup.contains(name)
    }

    /// Whether `name` is known.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Method names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|s| s.as_str())
    }

    /// Calls a method as a JSON-RPC request does, once the application runs: a
    /// startup-only method answers SPDK's -1 (invalid state) instead of running.
    pub async fn call_rpc(&self, name: &str, params: Option<Value>) -> Result<Value> {
        if self.startup.contains(name) {
            return Err(Error::Rpc {
                code: -1,
                message: STARTUP_ONLY.into(),
            });
        }
        self.call(name, params).await
    }

    /// Calls a method (on the current thread), as a config file does.
    pub async fn call(&self, name: &str, params: Option<Value>) -> Result<Value> {
        match self.map.get(name) {
            Some(f) => f(params).await,
            None => Err(Error::invalid("method", format!("unknown method {name}"))),
        }
    }
}

/// The bdev named `name`, or SPDK's -ENODEV naming it.
fn bdev_named(name: String) -> Result<crate::bdev::Bdev> {
    crate::bdev::get_by_name(&name).ok_or(Error::NoSuchBdev { name })
}

/// The bdev `name` names, or every bdev when there is no name (the `name` param of the
/// listing methods).
fn named_or_all(name: Option<String>) -> Result<Vec<crate::bdev::Bdev>> {
    match name {
        Some(n) => Ok(vec![bdev_named(n)?]),
        None => Ok(crate::bdev::list()),
    }
}

/// A bdev as `bdev_get_bdevs` describes it (SPDK's field names).
pub fn bdev_info(b: &crate::bdev::Bdev) -> Value {
    use crate::bdev::IoType;
    let mut aliases: Vec<String> = b.aliases().to_vec();
    let u = b.uuid().to_string();
    if b.name() != u && !aliases.contains(&u) {
        aliases.push(u.clone());
    }
    // Every I/O type SPDK names, as it lists them; those this layer lacks are false.
    let io: serde_json::Map<String, Value> = SPDK_IO_TYPES
        .iter()
        .map(|n| {
            let ok = IoType::from_name(n).is_some_and(|t| b.io_type_supported(t));
            (n.to_string(), Value::Bool(ok))
        })
        .collect();
    let claimed = b.claimed_by().is_some();
    let mut v = serde_json::json!({
        "name": b.name(),
        "aliases": aliases,
        "product_name": b.product_name(),
        "block_size": b.block_len(),
        "num_blocks": b.num_blocks(),
        "uuid": u,
        "assigned_rate_limits": b.qos_limits(),
        "claimed": claimed,
        "zoned": false,
        "supported_io_types": io,
        "driver_specific": b.dump_info_json().unwrap_or_else(|| serde_json::json!({})),
    });
    if claimed {
        // The only claim this layer has is SPDK's exclusive-write one.
        v["claim_type"] = Value::String("exclusive_write".into());
    }
    v
}

/// The I/O types SPDK v24.09 lists in `supported_io_types`, in its order.
const SPDK_IO_TYPES: [&str; 20] = [
    "read",
    "write",
    "unmap",
    "flush",
    "reset",
    "nvme_admin",
    "nvme_io",
    "nvme_io_md",
    "write_zeroes",
    "zcopy",
    "get_zone_info",
    "zone_management",
    "zone_append",
    "compare",
    "compare_and_write",
    "abort",
    "seek_hole",
    "seek_data",
    "copy",
    "nvme_iov_md",
];

/// The configuration that recreates the current application's bdevs, in SPDK's format
/// (`save_config`): bdev options, then each bdev's create call in registration order
/// (bases before what stacks on them), then `bdev_wait_for_examine`.
pub fn save_config() -> Value {
    let opts = crate::thread::with_current(|t| t.runtime().bdev.opts.clone()).unwrap_or_default();
    let mut config = vec![serde_json::json!({"method": "bdev_set_options", "params": opts})];
    // As SPDK: the examine allow list right after the options.
    config.extend(crate::module::examine_config_json());
    config.extend(crate::module::config_json());
    let bdevs = crate::bdev::list();
    config.extend(bdevs.iter().filter_map(|b| b.write_config_json()));
    // What the layer itself keeps per bdev, after every bdev exists.
    for b in &bdevs {
        let q = b.qos_limits();
        if q.any() {
            let mut p = serde_json::Map::new();
            p.insert("name".into(), Value::String(b.name().to_string()));
            for (k, v) in serde_json::to_value(q)
                .unwrap_or_default()
                .as_object()
                .into_iter()
                .flatten()
            {
                if v.as_u64().is_some_and(|x| x > 0) {
                    p.insert(k.clone(), v.clone());
                }
            }
            config.push(serde_json::json!({"method": "bdev_set_qos_limit", "params": p}));
        }
        if let Some(opc) = b.histogram_enabled() {
            let mut p = serde_json::json!({"name": b.name(), "enable": true});
            if let Some(t) = opc {
                p["opc"] = Value::String(t.name().into());
            }
            config.push(serde_json::json!({"method": "bdev_enable_histogram", "params": p}));
        }
    }
    config.push(serde_json::json!({"method": "bdev_wait_for_examine"}));
    let mut subsystems = Vec::new();
    let accel = crate::module::accel_config_json();
    if !accel.is_empty() {
        // Before the bdevs that use them, as SPDK orders its subsystems.
        subsystems.push(serde_json::json!({"subsystem": "accel", "config": accel}));
    }
    subsystems.push(serde_json::json!({"subsystem": "bdev", "config": config}));
    serde_json::json!({ "subsystems": subsystems })
}

/// Deserialises a method's params into its typed options, with a message naming the
/// method and what is wrong.
pub fn parse_params<T: DeserializeOwned>(method: &str, params: Option<Value>) -> Result<T> {
    // `null` is no params, as in SPDK.
    let v = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v,
    };
    // serde would take an array as the fields in order; SPDK's decoder takes objects only.
    if !v.is_object() {
        return Err(Error::Decode {
            method: method.to_string(),
            reason: "params must be an object".into(),
        });
    }
    serde_json::from_value(v).map_err(|e| Error::Decode {
        method: method.to_string(),
        reason: e.to_string(),
    })
}

/// Deserialises a `*_set_options` method's params on top of the options in force, as
/// SPDK does (it reads the current options, then decodes the params over them): options
/// the call leaves out keep their values instead of going back to the defaults.
pub fn parse_params_over<T: Serialize + DeserializeOwned>(
    method: &str,
    current: &T,
    params: Option<Value>,
) -> Result<T> {
    let mut v = serde_json::to_value(current)
        .map_err(|e| Error::Config(format!("{method}: current options: {e}")))?;
    match (v.as_object_mut(), params) {
        (Some(o), Some(Value::Object(p))) => o.extend(p),
        (_, None | Some(Value::Null)) => {}
        (_, Some(p)) => {
            return Err(Error::Decode {
                method: method.to_string(),
                reason: format!("expected an object, got {p}"),
            });
        }
    }
    parse_params(method, Some(v))
}

impl ConfigFile {
    /// Parses a config from text.
    pub fn parse(text: &str) -> Result<ConfigFile> {
        serde_json::from_str(text).map_err(|e| Error::Config(format!("invalid JSON config: {e}")))
    }

    /// Reads and parses a config file.
    pub fn read(path: &std::path::Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading config {}: {e}", path.display())))?;
        let r = Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())));
        // The text may hold key material (accel_crypto_key_create): wiped, not just freed.
        wipe(text);
        r
    }

    /// Wipes every string a method's params hold (key material among them) and drops the
    /// config: call once it is loaded, rather than keep it for the process's life.
    pub fn wipe(self) {
        fn wipe_value(v: Value) {
            match v {
                Value::String(s) => wipe(s),
                Value::Array(a) => a.into_iter().for_each(wipe_value),
                Value::Object(o) => o.into_iter().for_each(|(k, v)| {
                    wipe(k);
                    wipe_value(v)
                }),
                _ => {}
            }
        }
        for s in self.subsystems {
            for c in s.config.into_iter().flatten() {
                if let Some(p) = c.params {
                    wipe_value(p);
                }
            }
        }
    }

    /// The `bdev_set_options` params, which apply before the application starts.
    pub fn bdev_opts(&self) -> Result<Option<BdevOpts>> {
        let call = self
            .subsystems
            .iter()
            .filter(|s| s.subsystem == "bdev")
            .flat_map(|s| s.config.iter().flatten())
            .find(|c| c.method == "bdev_set_options");
        let Some(c) = call else { return Ok(None) };
        let o: BdevOpts = parse_params("bdev_set_options", c.params.clone())?;
        o.validate()?;
        Ok(Some(o))
    }

    /// Runs every method of the `bdev` subsystem, in order, on the current thread; of the
    /// `accel` subsystem, the methods this application has (crypto keys), skipping the
    /// others with a warning (SPDK's accel options mean nothing here).
    pub async fn load(&self, methods: &Methods) -> Result<()> {
        for s in &self.subsystems {
            if s.subsystem == "accel" {
                for (i, c) in s.config.iter().flatten().enumerate() {
                    if !methods.contains(&c.method) {
                        tracing::warn!(method = %c.method, "config: accel method not supported, skipped");
                        continue;
                    }
                    methods
                        .call(&c.method, c.params.clone())
                        .await
                        .map_err(|e| {
                            Error::Config(format!(
                                "subsystem accel, method {} (index {i}): {e}",
                                c.method
                            ))
                        })?;
                }
                continue;
            }
            if s.subsystem != "bdev" {
                tracing::warn!(subsystem = %s.subsystem, "config: subsystem not supported, skipped");
                continue;
            }
            for (i, c) in s.config.iter().flatten().enumerate() {
                if !methods.contains(&c.method) {
                    return Err(Error::Config(format!(
                        "subsystem bdev, method {} (index {i}): unknown method",
                        c.method
                    )));
                }
                methods
                    .call(&c.method, c.params.clone())
                    .await
                    .map_err(|e| {
                        Error::Config(format!(
                            "subsystem bdev, method {} (index {i}): {e}",
                            c.method
                        ))
                    })?;
            }
        }
        // A config written by hand may lack the final bdev_wait_for_examine: the bdevs it
        // builds through examine (RAIDs from their superblocks) are there all the same.
        crate::module::wait_for_examine().await;
        Ok(())
    }
}

/// Overwrites a string's bytes with zeros before freeing them (in place: `into_bytes`
/// keeps the allocation).
fn wipe(s: String) {
    let mut b = s.into_bytes();
    b.fill(0);
    drop(std::hint::black_box(b));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_layout_and_bdev_opts() {
        let c = ConfigFile::parse(
            r#"{"subsystems":[{"subsystem":"accel","config":[]},
                {"subsystem":"bdev","config":[
                  {"method":"bdev_set_options","params":{"bdev_io_pool_size":1024,"bdev_io_cache_size":64}},
                  {"method":"bdev_null_create","params":{"name":"n","num_blocks":8,"block_size":512}}]},
                {"subsystem":"vmd","config":null}]}"#,
        )
        .unwrap();
        assert_eq!(c.subsystems.len(), 3);
        let o = c.bdev_opts().unwrap().unwrap();
        assert_eq!(
            (
                o.bdev_io_pool_size,
                o.bdev_io_cache_size,
                o.bdev_auto_examine
            ),
            (1024, 64, true)
        );
    }

    #[test]
    fn bad_json_is_an_error_with_position() {
        let e = ConfigFile::parse("{\"subsystems\": [}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(ConfigFile::parse("{}").is_err());
    }
}

//! The NVMe driver: wire structures ([`spec`]), transports (NVMe/TCP first: [`tcp`]; PCIe
//! over VFIO and RDMA follow, behind the same transport trait), the controller state
//! machine and the bdev glue (one bdev per namespace), as DESIGN.md lays out.
//!
//! - [`spec`]: the specification's structures, size-checked at compile time;
//! - [`tcp`]: NVMe/TCP PDUs (a parser that never panics, fuzzed) and queue pairs;
//! - [`ctrlr`]: fabrics bring-up (Connect, properties, Identify, queues, discovery log);
//! - [`bdev`]: `bdev_nvme_attach_controller` and the rest: namespace bdevs, per-thread
//!   queue pairs, keep-alive, asynchronous events, reconnection, reset, I/O timeouts;
//! - [`discovery`]: the discovery service;
//! - [`null_target`]: a null NVMe/TCP target for benchmarks and tests above the transport.

pub mod bdev;
pub mod ctrlr;
pub mod discovery;
pub mod null_target;
pub mod spec;
pub mod tcp;
pub mod transport;

use std::sync::Arc;

use bdev_core::config::{Methods, parse_params, parse_params_over};
use bdev_core::module::BdevModule;
use serde_json::Value;

impl ctrlr::Error {
    /// For the RPC edge: an errno as SPDK's code, with this error's text.
    fn rpc(self, what: &str) -> bdev_core::Error {
        let code = match &self {
            ctrlr::Error::Protocol(_) => -libc::EINVAL,
            ctrlr::Error::Exists(_) => -libc::EEXIST,
            ctrlr::Error::NotFound(_) => -libc::ENODEV,
            ctrlr::Error::TooManyBdevs { .. } => -libc::ERANGE,
            ctrlr::Error::Core(c) => c.errno(),
            _ => -libc::EIO,
        };
        bdev_core::Error::Rpc {
            code,
            message: format!("{what}: {self}"),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// `bdev_nvme_reset_controller`'s params (SPDK's `cntlid` picks one path of a
/// multipath controller; with one path it may only name that one).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetParams {
    name: String,
    #[serde(default)]
    cntlid: Option<u16>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptName {
    #[serde(default)]
    name: Option<String>,
}

/// The NVMe module.
#[derive(Debug, Default)]
pub struct NvmeModule;

impl BdevModule for NvmeModule {
    fn name(&self) -> &'static str {
        bdev::MODULE
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register("bdev_nvme_attach_controller", |p| {
            Box::pin(async move {
                let o: bdev::AttachOpts = parse_params("bdev_nvme_attach_controller", p)?;
                // SPDK's decoder refuses an unknown multipath mode: a decode failure.
                o.check_multipath()
                    .map_err(|reason| bdev_core::Error::Decode {
                        method: "bdev_nvme_attach_controller".into(),
                        reason,
                    })?;
                let name = o.name.clone();
                let names = bdev::attach(o)
                    .await
                    .map_err(|e| e.rpc(&format!("Unable to attach controller {name}")))?;
                Ok(Value::Array(names.into_iter().map(Value::String).collect()))
            })
        });
        m.register("bdev_nvme_detach_controller", |p| {
            Box::pin(async move {
                let d: bdev::DetachParams = parse_params("bdev_nvme_detach_controller", p)?;
                bdev::detach(&d).await.map_err(|e| match e {
                    ctrlr::Error::Protocol(m) => bdev_core::Error::Rpc {
                        code: -libc::ENODEV,
                        message: m,
                    },
                    e => e.rpc("bdev_nvme_detach_controller"),
                })?;
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_nvme_reset_controller", |p| {
            Box::pin(async move {
                let d: ResetParams = parse_params("bdev_nvme_reset_controller", p)?;
                bdev::reset_controller(&d.name, d.cntlid)
                    .await
                    .map_err(|e| match e {
                        ctrlr::Error::Protocol(m) => bdev_core::Error::Rpc {
                            code: -libc::ENODEV,
                            message: m,
                        },
                        e => e.rpc("bdev_nvme_reset_controller"),
                    })?;
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_nvme_start_discovery", |p| {
            Box::pin(async move {
                let o: discovery::DiscoveryOpts = parse_params("bdev_nvme_start_discovery", p)?;
                discovery::start(o)
                    .await
                    .map_err(|e| e.rpc("bdev_nvme_start_discovery"))?;
                Ok(Value::Bool(true))
            })
        });
        m.register("bdev_nvme_stop_discovery", |p| {
            Box::pin(async move {
                let d: NameParams = parse_params("bdev_nvme_stop_discovery", p)?;
                discovery::stop(&d.name)
                    .await
                    .map_err(|e| e.rpc("bdev_nvme_stop_discovery"))?;
                Ok(Value::Bool(true))
            })
        });
        // SPDK writes `{"enable": false, ...}` into every saved config: accepted, so that
        // those configs load. Hotplug watches the PCIe bus, which this driver does not use.
        m.register_sync("bdev_nvme_set_hotplug", |p| {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                enable: bool,
                #[allow(dead_code)]
                period_us: Option<u64>,
            }
            let p: P = parse_params("bdev_nvme_set_hotplug", p)?;
            if p.enable {
                return Err(bdev_core::Error::Rpc {
                    code: -libc::EOPNOTSUPP,
                    message: "bdev_nvme_set_hotplug: hotplug watches PCIe NVMe devices, and this driver has no PCIe transport".into(),
                });
            }
            Ok(Value::Bool(true))
        });
        m.register_sync("bdev_nvme_get_discovery_info", |_| {
            let l = discovery::info().map_err(|e| e.rpc("bdev_nvme_get_discovery_info"))?;
            Ok(Value::Array(l))
        });
        m.register_sync("bdev_nvme_set_options", |p| {
            let o: bdev::NvmeOptions =
                parse_params_over("bdev_nvme_set_options", &bdev::options(), p)?;
            // Refused by SPDK's decoder: a decode failure, before the attached-controllers
            // check.
            o.check().map_err(|reason| bdev_core::Error::Decode {
                method: "bdev_nvme_set_options".into(),
                reason,
            })?;
            bdev::set_options(o).map_err(|e| e.rpc("bdev_nvme_set_options"))?;
            Ok(Value::Bool(true))
        });
        m.register_sync("bdev_nvme_get_controllers", |p| {
            let o: OptName = match p {
                None | Some(Value::Null) => OptName::default(),
                p => parse_params("bdev_nvme_get_controllers", p)?,
            };
            let list = bdev::controllers(o.name.as_deref())
                .map_err(|e| e.rpc("bdev_nvme_get_controllers"))?;
            if let (Some(name), true) = (&o.name, list.is_empty()) {
                // SPDK's code here is a positive EINVAL; scripts compare it as it is.
                return Err(bdev_core::Error::Rpc {
                    code: libc::EINVAL,
                    message: format!("Controller {name} does not exist"),
                });
            }
            Ok(Value::Array(list))
        });
    }

    fn fini(&self) {
        discovery::stop_all();
        bdev::shutdown_all();
    }

    fn config_json(&self) -> Vec<Value> {
        let mut v = vec![Self::options_json()];
        v.extend(bdev::config_json());
        v.extend(discovery::config_json());
        v
    }
}

impl NvmeModule {
    fn options_json() -> Value {
        serde_json::json!({"method": "bdev_nvme_set_options", "params": bdev::options()})
    }
}

/// Adds the NVMe module to the current application and its methods to `m`.
pub fn register(m: &mut Methods) -> bdev_core::Result<()> {
    m.add_module(Arc::new(NvmeModule))
}

//! The module registry: what each bdev module crate gives an application (SPDK's
//! `spdk_bdev_module`).
//!
//! An application builds its [`Methods`] table and adds every module it links with
//! [`Methods::add_module`]: the module's config/RPC methods go into the table, and the
//! module into the application's registry, which
//! - offers each newly registered bdev to every module's [`BdevModule::examine`], in the
//!   order the modules were added (a virtual bdev waiting for its base claims it there),
//!   when `bdev_auto_examine` is on (the default);
//! - asks each module for its own config entries at `save_config` (module options come
//!   before the bdevs);
//! - calls [`BdevModule::fini`] in reverse order once every bdev is unregistered at stop.
//!
//! Examine runs synchronously, on the thread that registered the bdev, right after the
//! registration: by the time `register` returns, every module has seen the bdev. A module
//! whose examine needs I/O (reading a RAID superblock) starts a task and holds an
//! [`ExamineToken`] until it is done; `bdev_wait_for_examine` waits for those.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::bdev::Bdev;
use crate::config::Methods;
use crate::error::{Error, Result};
use crate::thread::current_or;

/// An examine that goes on after [`BdevModule::examine`] returned (a module reading a
/// superblock, say): `bdev_wait_for_examine` waits until every token is dropped. Get one
/// with [`examine_started`] inside `examine`, move it into the task, drop it when done.
#[derive(Debug)]
pub struct ExamineToken(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ExamineToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Counts an examine in progress in the current application until the token drops.
pub fn examine_started() -> Option<ExamineToken> {
    let rt = crate::thread::with_current(|t| t.runtime().clone())?;
    let n = rt.bdev.modules.examining.clone();
    n.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    Some(ExamineToken(n))
}

/// Waits until no examine is in progress in the current application
/// (`bdev_wait_for_examine`).
pub async fn wait_for_examine() {
    let Some(n) = crate::thread::with_current(|t| t.runtime().bdev.modules.examining.clone())
    else {
        return;
    };
    // Examines are short (a superblock read): let the thread run them.
    while n.load(std::sync::atomic::Ordering::Acquire) > 0 {
        crate::thread::yield_now().await;
    }
}

/// A bdev module, as the registry sees it.
pub trait BdevModule: Send + Sync + 'static {
    /// The module's name ("malloc", "passthru", ...).
    fn name(&self) -> &'static str;

    /// Adds the module's config/RPC methods (`bdev_<module>_create`, ...).
    fn register_methods(&self, methods: &mut Methods);

    /// Called once when the module is added, on the application's thread.
    fn init(&self) -> Result<()> {
        Ok(())
    }

    /// Called once at stop, after every bdev is unregistered.
    fn fini(&self) {}

    /// A bdev was registered: claim it and build on it if it is one this module waits for.
    /// Must not block; errors are the module's to log.
    fn examine(&self, _bdev: &Bdev) {}

    /// The module's own config entries (options, not bdevs: each bdev writes its own).
    fn config_json(&self) -> Vec<Value> {
        Vec::new()
    }

    /// Entries of SPDK's `accel` subsystem this module owns (crypto keys), which
    /// `save_config` writes before the `bdev` subsystem.
    fn accel_config_json(&self) -> Vec<Value> {
        Vec::new()
    }
}

/// The modules of one application, in the order they were added.
#[derive(Default)]
pub(crate) struct Modules {
    list: std::sync::Mutex<Vec<Arc<dyn BdevModule>>>,
    data: std::sync::Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Examines still going on (see [`ExamineToken`]).
    examining: Arc<std::sync::atomic::AtomicUsize>,
}

impl Modules {
    pub(crate) fn snapshot(&self) -> Vec<Arc<dyn BdevModule>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(&self, m: Arc<dyn BdevModule>) -> bool {
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if l.iter().any(|x| x.name() == m.name()) {
            return false;
        }
        l.push(m);
        true
    }

    pub(crate) fn take_all(&self) -> Vec<Arc<dyn BdevModule>> {
        std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Methods {
    /// Adds a module to the current application: its methods into this table, the module
    /// into the registry (examine, save_config, fini). Adding a module twice is a no-op.
    pub fn add_module(&mut self, m: Arc<dyn BdevModule>) -> Result<()> {
        let t = current_or("add_module")?;
        m.init()?;
        if t.runtime().bdev.modules.add(m.clone()) {
            m.register_methods(self);
        }
        Ok(())
    }
}

/// A module's state in the current application (its configured bdevs, say), created on
/// first use. Keyed by type: each module crate uses its own private type. `None` off a
/// thread of an application.
pub fn app_data<T: Default + Send + Sync + 'static>() -> Option<Arc<T>> {
    let rt = crate::thread::with_current(|t| t.runtime().clone())?;
    let mut d = rt
        .bdev
        .modules
        .data
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let v = d
        .entry(TypeId::of::<T>())
        .or_insert_with(|| Arc::new(T::default()) as Arc<dyn Any + Send + Sync>)
        .clone();
    v.downcast::<T>().ok()
}

/// Offers a new bdev to every module (registration calls it).
pub(crate) fn examine(bdev: &Bdev) {
    let Some(rt) = crate::thread::with_current(|t| t.runtime().clone()) else {
        return;
    };
    if !rt.bdev.opts.bdev_auto_examine {
        let allow = rt
            .bdev
            .examine_allow
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let named = |n: &str| n == bdev.name() || bdev.aliases().iter().any(|a| a == n);
        if !allow.iter().any(|n| named(n)) {
            return;
        }
    }
    for m in rt.bdev.modules.snapshot() {
        if bdev.is_removing() {
            break;
        }
        m.examine(bdev);
    }
}

/// `bdev_examine`: with `bdev_auto_examine` off, lets the modules examine the bdev
/// `name`, now if it exists and whenever a bdev of that name registers. SPDK's errors:
/// -EINVAL while auto examine is on, -EEXIST for a name already allowed.
pub fn examine_by_name(name: &str) -> Result<()> {
    let rt = crate::thread::current_or("bdev_examine")?.runtime().clone();
    if rt.bdev.opts.bdev_auto_examine {
        return Err(Error::Rpc {
            code: -libc::EINVAL,
            message: "Manual examine is not allowed if auto examine is enabled".into(),
        });
    }
    {
        let mut allow = rt
            .bdev
            .examine_allow
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if allow.iter().any(|n| n == name) {
            return Err(Error::Rpc {
                code: -libc::EEXIST,
                message: format!("Duplicate bdev name for manual examine: {name}"),
            });
        }
        allow.push(name.to_string());
    }
    if let Some(b) = crate::bdev::get_by_name(name) {
        examine(&b);
    }
    Ok(())
}

/// The `bdev_examine` calls that recreate the allow list (`save_config`).
pub(crate) fn examine_config_json() -> Vec<Value> {
    crate::thread::with_current(|t| {
        t.runtime()
            .bdev
            .examine_allow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|n| serde_json::json!({"method": "bdev_examine", "params": {"name": n}}))
            .collect()
    })
    .unwrap_or_default()
}

/// The modules' `accel` subsystem entries, in module order.
pub(crate) fn accel_config_json() -> Vec<Value> {
    crate::thread::with_current(|t| t.runtime().bdev.modules.snapshot())
        .unwrap_or_default()
        .iter()
        .flat_map(|m| m.accel_config_json())
        .collect()
}

/// The modules' own config entries, in module order.
pub(crate) fn config_json() -> Vec<Value> {
    crate::thread::with_current(|t| t.runtime().bdev.modules.snapshot())
        .unwrap_or_default()
        .iter()
        .flat_map(|m| m.config_json())
        .collect()
}

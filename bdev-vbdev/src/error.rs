//! The error-injection bdev (SPDK's `bdev_error`): forwards I/O to its base, except that
//! chosen I/O types fail, stay pending, come back corrupted or report no memory, a chosen
//! number of times (`bdev_error_inject_error`). For testing what sits above a bdev.
//!
//! Built like [`crate::passthru`] (see there for the why of each step); what it adds is the
//! injection table, checked on every I/O. The table is shared by all threads: a lock-free
//! "anything armed?" flag keeps the unarmed path as cheap as a passthru.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bdev_core::bdev::{
    self, Bdev, BdevChannel, BdevIo, BdevOps, Desc, DestructDone, IoStatus, IoType,
};
use bdev_core::config::{Methods, parse_params};
use bdev_core::module::BdevModule;
use bdev_core::thread::{IoChannel, IoDevice};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use bdev_core::vbdev::{BaseLink, Configs, VbdevConfig};

use crate::{DeleteParams, Error};

/// The module's name.
pub const MODULE: &str = "error";

/// Options of `bdev_error_create` (SPDK's names). The bdev is named `EE_<base_name>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorOpts {
    /// The base bdev.
    pub base_name: String,
    /// The error bdev's UUID (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// What an injected error does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// Complete the I/O as failed, without reaching the base.
    Failure,
    /// Hold the I/O until a reset (which fails it, on every thread) or the bdev's
    /// unregistration (deleted, its base removed, the application stopping).
    Pending,
    /// Flip a byte of the data: of a write before it reaches the base, of a read after.
    CorruptData,
    /// Complete the I/O with NOMEM, without reaching the base (the bdev layer retries it).
    Nomem,
}

/// Which I/O types an injection applies to, or `clear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectIoType {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Unmaps.
    Unmap,
    /// Flushes.
    Flush,
    /// Every type.
    All,
    /// Removes every injection.
    Clear,
}

impl VbdevConfig for ErrorOpts {
    fn name(&self) -> String {
        name_for(&self.base_name)
    }
    fn base_name(&self) -> &str {
        &self.base_name
    }
}

fn default_num() -> u32 {
    1
}

/// Options of `bdev_error_inject_error` (SPDK's names).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InjectOpts {
    /// The error bdev (`EE_...`).
    pub name: String,
    /// Which I/O types.
    pub io_type: InjectIoType,
    /// What happens to them.
    pub error_type: ErrorType,
    /// How many I/Os get the error (default 1).
    #[serde(default = "default_num")]
    pub num: u32,
    /// Inject only while at least this many I/Os are outstanding on the channel (0: always).
    #[serde(default)]
    pub queue_depth: u64,
    /// Byte offset in the I/O's data to corrupt (corrupt_data).
    #[serde(default)]
    pub corrupt_offset: u64,
    /// Value XORed into that byte (corrupt_data; must not be 0).
    #[serde(default)]
    pub corrupt_value: u8,
}

#[derive(Clone, Copy, Debug)]
struct Injection {
    error_type: ErrorType,
    remaining: u32,
    queue_depth: u64,
    corrupt_offset: u64,
    corrupt_value: u8,
}

/// The I/O types an injection can name, as indices into the table.
const TYPES: [IoType; 4] = [IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush];

fn slot(t: IoType) -> Option<usize> {
    TYPES.iter().position(|x| *x == t)
}

struct ErrorBdev {
    name: String,
    base: Bdev,
    link: BaseLink,
    armed: AtomicBool,
    table: Mutex<[Option<Injection>; 4]>,
    /// Each thread's I/Os held by `pending` injections, as channels of a device of our
    /// own, so that a reset or the bdev's removal can reach every thread's.
    held: IoDevice<Held>,
}

/// One thread's I/Os held by `pending` injections.
type Held = RefCell<VecDeque<BdevIo>>;

struct ErrChannel {
    desc: Arc<Desc>,
    base: BdevChannel,
    pending: IoChannel<Held>,
}

/// Fails every thread's held I/O, then runs `done` on the calling thread.
fn fail_held(dev: &IoDevice<Held>, done: impl FnOnce() + Send + 'static) {
    let r = dev.for_each_channel(
        |ch, next| {
            let held: Vec<BdevIo> = ch.borrow_mut().drain(..).collect();
            for io in held {
                io.complete(IoStatus::Failed);
            }
            next.next(Ok(()));
        },
        move |_| done(),
    );
    if let Err(e) = r {
        tracing::warn!("error bdev: failing held I/O: {e}");
    }
}

impl ErrorBdev {
    /// Takes one injection for `io`, if one applies.
    fn take(&self, t: IoType, outstanding: u64) -> Option<Injection> {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        let i = slot(t)?;
        let mut tab = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let inj = tab[i].as_mut()?;
        if inj.remaining == 0 || outstanding < inj.queue_depth {
            return None;
        }
        inj.remaining -= 1;
        let out = *inj;
        if inj.remaining == 0 {
            tab[i] = None;
            if tab.iter().all(|x| x.is_none()) {
                self.armed.store(false, Ordering::Relaxed);
            }
        }
        Some(out)
    }
}

/// XORs `value` into byte `offset` of the I/O's data, if the data is that long.
fn corrupt(io: &mut BdevIo, offset: u64, value: u8) {
    let mut skip = offset as usize;
    let mut done = false;
    io.for_each_segment_mut(|seg| {
        if done {
            return;
        }
        if skip < seg.len() {
            seg[skip] ^= value;
            done = true;
        } else {
            skip -= seg.len();
        }
    });
}

impl BdevOps for ErrorBdev {
    type Channel = ErrChannel;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<ErrChannel> {
        let (desc, base) = self.link.channel(&self.name)?;
        Ok(ErrChannel {
            desc,
            base,
            pending: self.held.get_channel()?,
        })
    }

    fn submit_request(&self, ch: &ErrChannel, mut io: BdevIo) {
        let t = io.io_type();
        if t == IoType::Reset {
            // As SPDK: fail what the `pending` injections hold, on every thread, and
            // complete the reset without passing it to the base.
            let (tx, rx) = bdev_core::oneshot::channel();
            fail_held(&self.held, move || tx.send(()));
            let task = async move {
                rx.await;
                io.complete(IoStatus::Success);
            };
            if let Err(e) = bdev_core::thread::spawn_local(task) {
                // Not on a thread: nothing to wait with (the reset fails as it drops).
                tracing::warn!("error bdev reset: {e}");
            }
            return;
        }
        // This I/O and those this thread has at the base.
        let n = ch.base.outstanding() + 1;
        match self.take(t, n) {
            None => {}
            Some(inj) => match inj.error_type {
                ErrorType::Failure => return io.complete(IoStatus::Failed),
                ErrorType::Nomem => return io.complete(IoStatus::NoMem),
                ErrorType::Pending => {
                    ch.pending.borrow_mut().push_back(io);
                    return;
                }
                ErrorType::CorruptData => {
                    if t == IoType::Write {
                        corrupt(&mut io, inj.corrupt_offset, inj.corrupt_value);
                    } else if t == IoType::Read {
                        let (off, val) = (inj.corrupt_offset, inj.corrupt_value);
                        return io.forward(&ch.desc, &ch.base, move |s, mut io| {
                            if s.is_success() {
                                corrupt(&mut io, off, val);
                            }
                            io.complete(s)
                        });
                    }
                }
            },
        }
        io.forward_and_complete(&ch.desc, &ch.base);
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        self.base.io_type_supported(io_type)
    }

    fn unregistering(&self) {
        // Held I/O would keep openers from draining, and so the bdev from going.
        fail_held(&self.held, || {});
    }

    fn destruct(&self, done: DestructDone) {
        self.held.unregister(|| {}).ok();
        self.link.close();
        // As SPDK: an error bdev gone (deleted or its base removed) is forgotten.
        if let Ok(c) = Configs::<ErrorOpts>::get() {
            c.remove(&self.name);
        }
        done.complete();
    }

    fn dump_info_json(&self) -> Option<Value> {
        Some(serde_json::json!({"error_disk": {"base_bdev": self.base.name()}}))
    }
}

/// The error bdev's name for a base.
pub fn name_for(base: &str) -> String {
    format!("EE_{base}")
}

/// Opens and claims `base`, registers `EE_<base>` on it.
fn build(opts: &ErrorOpts, base: &Bdev) -> Result<Bdev, Error> {
    let name = opts.name();
    let desc = bdev_core::vbdev::open_base(base, MODULE, &name)?;
    let props = bdev_core::vbdev::props_like(base, &name, "Error Injection Disk", opts.uuid);
    let ops = Arc::new(ErrorBdev {
        name,
        base: base.clone(),
        link: BaseLink::new(desc),
        armed: AtomicBool::new(false),
        table: Mutex::new([None; 4]),
        held: IoDevice::register(format!("{}_held", opts.name()), || {
            Ok(RefCell::new(VecDeque::new()))
        }),
    });
    Ok(bdev::register(props, ops)?)
}

/// Creates an error bdev `EE_<base_name>` over `base_name` (`bdev_error_create`), now or,
/// if the base does not exist yet, when it appears. Returns the name.
pub fn create(opts: ErrorOpts) -> Result<String, Error> {
    Configs::<ErrorOpts>::get()?.create(opts, build)
}

/// Deletes an error bdev (`bdev_error_delete`).
pub async fn delete(name: &str) -> Result<(), Error> {
    Ok(Configs::<ErrorOpts>::get()?.delete(name, MODULE).await?)
}

/// Arms (or, with `io_type: clear`, disarms) error injection (`bdev_error_inject_error`).
pub fn inject(opts: InjectOpts) -> Result<(), Error> {
    let b = bdev::get_by_name(&opts.name)
        .filter(|b| b.module_name() == MODULE)
        .ok_or_else(|| Error::NotFound {
            name: opts.name.clone(),
            module: MODULE,
        })?;
    if opts.error_type == ErrorType::CorruptData && opts.corrupt_value == 0 {
        return Err(Error::InvalidOpts(
            "corrupt_value must be non-zero for corrupt_data".into(),
        ));
    }
    let ops = b.ops::<ErrorBdev>().ok_or_else(|| Error::NotFound {
        name: opts.name.clone(),
        module: MODULE,
    })?;
    let mut tab = ops.table.lock().unwrap_or_else(|e| e.into_inner());
    let inj = Injection {
        error_type: opts.error_type,
        remaining: opts.num,
        queue_depth: opts.queue_depth,
        corrupt_offset: opts.corrupt_offset,
        corrupt_value: opts.corrupt_value,
    };
    let set = |t: &mut Option<Injection>| *t = (opts.num > 0).then_some(inj);
    match opts.io_type {
        // `clear` still names an error type (required, as in SPDK) and ignores it.
        InjectIoType::Clear => tab.iter_mut().for_each(|t| *t = None),
        InjectIoType::All => tab.iter_mut().for_each(set),
        InjectIoType::Read => set(&mut tab[0]),
        InjectIoType::Write => set(&mut tab[1]),
        InjectIoType::Unmap => set(&mut tab[2]),
        InjectIoType::Flush => set(&mut tab[3]),
    }
    ops.armed
        .store(tab.iter().any(|t| t.is_some()), Ordering::Relaxed);
    Ok(())
}

/// The error module (`bdev_error_create`, `bdev_error_delete`, `bdev_error_inject_error`).
#[derive(Debug, Default)]
pub struct ErrorModule;

impl BdevModule for ErrorModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn examine(&self, bdev: &Bdev) {
        if let Ok(c) = Configs::<ErrorOpts>::get() {
            c.examine(bdev, build);
        }
    }

    fn config_json(&self) -> Vec<Value> {
        // Every config, built or not, as SPDK writes them.
        Configs::<ErrorOpts>::get()
            .map(|c| c.all())
            .unwrap_or_default()
            .into_iter()
            .map(|mut o| {
                // The UUID a built bdev has, so that a reload gives the same bdev.
                if let Some(b) = bdev::get_by_name(&o.name()) {
                    o.uuid = Some(b.uuid());
                }
                serde_json::json!({"method": "bdev_error_create", "params": o})
            })
            .collect()
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("bdev_error_create", |p| {
            let o: ErrorOpts = parse_params("bdev_error_create", p)?;
            create(o)?;
            Ok(Value::Bool(true))
        });
        m.register("bdev_error_delete", |p| {
            Box::pin(async move {
                let d: DeleteParams = parse_params("bdev_error_delete", p)?;
                delete(&d.name).await?;
                Ok(Value::Bool(true))
            })
        });
        m.register_sync("bdev_error_inject_error", |p| {
            let o: InjectOpts = parse_params("bdev_error_inject_error", p)?;
            inject(o)?;
            Ok(Value::Bool(true))
        });
    }
}

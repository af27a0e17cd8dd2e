//! The delay bdev (SPDK's `bdev_delay`): forwards I/O to its base and, once the base has
//! completed a read or write, holds it back for its latency: the average latency for 99
//! I/Os in 100, the p99 latency for the other one, chosen at random per I/O. Latencies
//! are microseconds and can be changed while I/O runs (`bdev_delay_update_latency`,
//! applying to I/O the base completes from then on). Other I/O types pass through
//! undelayed; a reset first aborts the I/Os this thread holds.
//!
//! Built like [`crate::passthru`]; what it adds is a per-thread set of four FIFO queues
//! (average/p99, read/write) of completed I/Os waiting for their time, emptied by the
//! channel's poller. Within a queue every I/O got the same latency, so deadlines are in
//! order and the poller only looks at the heads.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bdev_core::bdev::{
    self, Bdev, BdevChannel, BdevIo, BdevOps, Desc, DestructDone, IoStatus, IoType,
};
use bdev_core::config::{Methods, parse_params};
use bdev_core::module::BdevModule;
use bdev_core::thread::{self, PollStatus, Poller, PollerRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use bdev_core::vbdev::{BaseLink, Configs, VbdevConfig};

use crate::Error;

/// The module's name.
pub const MODULE: &str = "delay";

/// Options of `bdev_delay_create` (SPDK's names; latencies in microseconds).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DelayOpts {
    /// The base bdev.
    pub base_bdev_name: String,
    /// The delay bdev's name.
    pub name: String,
    /// Latency of 99% of reads.
    pub avg_read_latency: u64,
    /// Latency of the other 1% of reads.
    pub p99_read_latency: u64,
    /// Latency of 99% of writes.
    pub avg_write_latency: u64,
    /// Latency of the other 1% of writes.
    pub p99_write_latency: u64,
    /// Its UUID (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl VbdevConfig for DelayOpts {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn base_name(&self) -> &str {
        &self.base_bdev_name
    }
}

/// Which latency `bdev_delay_update_latency` changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayType {
    /// `avg_read_latency`.
    AvgRead,
    /// `p99_read_latency`.
    P99Read,
    /// `avg_write_latency`.
    AvgWrite,
    /// `p99_write_latency`.
    P99Write,
}

/// Options of `bdev_delay_update_latency`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpdateLatencyOpts {
    /// The delay bdev.
    pub delay_bdev_name: String,
    /// Which latency.
    pub latency_type: DelayType,
    /// The new value, in microseconds.
    pub latency_us: u64,
}

struct DelayBdev {
    name: String,
    base_name: String,
    base: Bdev,
    link: BaseLink,
    /// Microseconds, indexed by [`DelayType`] order; shared with the channels.
    lat_us: Arc<[AtomicU64; 4]>,
}

/// Completed I/Os waiting for their deadline, one FIFO per [`DelayType`].
struct Queues {
    q: [RefCell<VecDeque<(u64, IoStatus, BdevIo)>>; 4],
    lat_us: Arc<[AtomicU64; 4]>,
    rng: Cell<u64>,
    /// In interrupt mode, the channel's poller: paused while every queue is empty, so an
    /// idle reactor can sleep (it has no fd to wait on), and resumed by the next push;
    /// while I/O is held, it names the earliest deadline for the reactor to wake at.
    pausable: OnceCell<PollerRef>,
}

struct DelayChannel {
    desc: Arc<Desc>,
    base: BdevChannel,
    queues: Rc<Queues>,
    _poller: Poller,
}

impl DelayBdev {
    fn latency_us(&self, t: DelayType) -> u64 {
        self.lat_us[t as usize].load(Ordering::Relaxed)
    }
}

impl Queues {
    /// 1 in 100, from a per-channel xorshift.
    fn one_in_100(&self) -> bool {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x % 100 == 0
    }

    fn poll(&self) -> PollStatus {
        let now = thread::now();
        let mut busy = false;
        for q in &self.q {
            loop {
                let io = {
                    let mut q = q.borrow_mut();
                    match q.front() {
                        Some((deadline, _, _)) if *deadline <= now => q.pop_front(),
                        _ => None,
                    }
                };
                let Some((_, status, io)) = io else { break };
                busy = true;
                io.complete(status);
            }
        }
        if let Some(p) = self.pausable.get() {
            // Nothing held: paused until the next hold. Something held: the reactor may
            // sleep until the earliest deadline (each queue is in deadline order).
            let next = self
                .q
                .iter()
                .filter_map(|q| q.borrow().front().map(|(d, _, _)| *d))
                .min();
            match next {
                None => p.pause(),
                Some(d) => p.set_wake_at(Some(d)),
            }
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn hold(&self, kind: DelayType, deadline: u64, status: IoStatus, io: BdevIo) {
        self.q[kind as usize]
            .borrow_mut()
            .push_back((deadline, status, io));
        if let Some(p) = self.pausable.get() {
            // Polled again before any sleep, which recomputes the wake-up time.
            p.set_wake_at(None);
            p.resume();
        }
    }
}

impl BdevOps for DelayBdev {
    type Channel = DelayChannel;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<DelayChannel> {
        let (desc, base) = self.link.channel(&self.name)?;
        let queues = Rc::new(Queues {
            q: Default::default(),
            lat_us: self.lat_us.clone(),
            rng: Cell::new(fastrand::u64(1..)),
            pausable: OnceCell::new(),
        });
        let q = queues.clone();
        let poller = Poller::register("delay", move || q.poll())?;
        if bdev_core::app::interrupt_mode() {
            let _ = queues.pausable.set(poller.downgrade());
        }
        Ok(DelayChannel {
            desc,
            base,
            queues,
            _poller: poller,
        })
    }

    fn submit_request(&self, ch: &DelayChannel, io: BdevIo) {
        let p99 = ch.queues.one_in_100();
        let kind = match (io.io_type(), p99) {
            (IoType::Read, false) => DelayType::AvgRead,
            (IoType::Read, true) => DelayType::P99Read,
            (IoType::Write, false) => DelayType::AvgWrite,
            (IoType::Write, true) => DelayType::P99Write,
            (IoType::Reset, _) => {
                // Abort what this thread holds back, then reset the base.
                for q in &ch.queues.q {
                    let held: Vec<_> = q.borrow_mut().drain(..).collect();
                    for (_, _, io) in held {
                        io.complete(IoStatus::Aborted);
                    }
                }
                return io.forward_and_complete(&ch.desc, &ch.base);
            }
            _ => return io.forward_and_complete(&ch.desc, &ch.base),
        };
        // The latency counts from the base's completion, as SPDK's does, and is read then,
        // so that an update applies to every I/O completing afterwards.
        let q = ch.queues.clone();
        io.forward(&ch.desc, &ch.base, move |s, io| {
            let us = q.lat_us[kind as usize].load(Ordering::Relaxed);
            let deadline =
                thread::now().saturating_add(us.saturating_mul(thread::ticks_hz()) / 1_000_000);
            q.hold(kind, deadline, s, io);
        });
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        self.base.io_type_supported(io_type)
    }

    fn destruct(&self, done: DestructDone) {
        self.link.close();
        done.complete();
    }

    fn write_config_json(&self, bdev: &Bdev) -> Option<Value> {
        let mut params = serde_json::json!({
            "base_bdev_name": self.base_name,
            "name": self.name,
            "avg_read_latency": self.latency_us(DelayType::AvgRead),
            "p99_read_latency": self.latency_us(DelayType::P99Read),
            "avg_write_latency": self.latency_us(DelayType::AvgWrite),
            "p99_write_latency": self.latency_us(DelayType::P99Write),
        });
        // The UUID it has, given or not, so that a reload gives the same bdev.
        params["uuid"] = Value::String(bdev.uuid().to_string());
        Some(serde_json::json!({"method": "bdev_delay_create", "params": params}))
    }

    fn dump_info_json(&self) -> Option<Value> {
        Some(serde_json::json!({"delay": {
            "name": self.name,
            "base_bdev_name": self.base_name,
            "avg_read_latency": self.latency_us(DelayType::AvgRead),
            "p99_read_latency": self.latency_us(DelayType::P99Read),
            "avg_write_latency": self.latency_us(DelayType::AvgWrite),
            "p99_write_latency": self.latency_us(DelayType::P99Write),
        }}))
    }
}

/// Opens and claims `base`, registers the delay bdev on it.
fn build(opts: &DelayOpts, base: &Bdev) -> Result<Bdev, Error> {
    let desc = bdev_core::vbdev::open_base(base, MODULE, &opts.name)?;
    let props = bdev_core::vbdev::props_like(base, &opts.name, "delay", opts.uuid);
    let ops = Arc::new(DelayBdev {
        name: opts.name.clone(),
        base_name: opts.base_bdev_name.clone(),
        base: base.clone(),
        link: BaseLink::new(desc),
        lat_us: Arc::new([
            AtomicU64::new(opts.avg_read_latency),
            AtomicU64::new(opts.p99_read_latency),
            AtomicU64::new(opts.avg_write_latency),
            AtomicU64::new(opts.p99_write_latency),
        ]),
    });
    Ok(bdev::register(props, ops)?)
}

/// Creates a delay bdev over `base_bdev_name` (`bdev_delay_create`), now or, if the base
/// does not exist yet, when it appears. Returns the name.
pub fn create(opts: DelayOpts) -> Result<String, Error> {
    if opts.avg_read_latency > opts.p99_read_latency
        || opts.avg_write_latency > opts.p99_write_latency
    {
        return Err(Error::InvalidOpts(
            "Unable to create a delay bdev where p99 latency is less than average latency.".into(),
        ));
    }
    Configs::<DelayOpts>::get()?.create(opts, build)
}

fn find(name: &str) -> Result<(Bdev, Arc<DelayBdev>), Error> {
    let b = bdev::get_by_name(name)
        .filter(|b| b.module_name() == MODULE)
        .ok_or_else(|| Error::NotFound {
            name: name.to_string(),
            module: MODULE,
        })?;
    let ops = b.ops::<DelayBdev>().ok_or_else(|| Error::NotFound {
        name: name.to_string(),
        module: MODULE,
    })?;
    Ok((b, ops))
}

/// Changes one latency of a delay bdev, for I/Os the base completes from now on
/// (`bdev_delay_update_latency`). As in SPDK, the average may end up above the p99.
pub fn update_latency(o: UpdateLatencyOpts) -> Result<(), Error> {
    let (_, d) = find(&o.delay_bdev_name)?;
    d.lat_us[o.latency_type as usize].store(o.latency_us, Ordering::Relaxed);
    Ok(())
}

/// Deletes a delay bdev (`bdev_delay_delete`): forgets its config and returns once the
/// bdev is unregistered.
pub async fn delete(name: &str) -> Result<(), Error> {
    Ok(Configs::<DelayOpts>::get()?.delete(name, MODULE).await?)
}

/// The delay module (`bdev_delay_create`, `bdev_delay_delete`, `bdev_delay_update_latency`).
#[derive(Debug, Default)]
pub struct DelayModule;

impl BdevModule for DelayModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn examine(&self, bdev: &Bdev) {
        if let Ok(c) = Configs::<DelayOpts>::get() {
            c.examine(bdev, build);
        }
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("bdev_delay_create", |p| {
            let o: DelayOpts = parse_params("bdev_delay_create", p)?;
            Ok(Value::String(create(o)?))
        });
        m.register("bdev_delay_delete", |p| {
            Box::pin(async move {
                let d: crate::DeleteParams = parse_params("bdev_delay_delete", p)?;
                delete(&d.name).await?;
                Ok(Value::Bool(true))
            })
        });
        m.register_sync("bdev_delay_update_latency", |p| {
            // SPDK decodes the type as a string and answers a bad one, and a bdev that is
            // missing or of another module, with codes of their own.
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                delay_bdev_name: String,
                latency_type: String,
                latency_us: u64,
            }
            let p: P = parse_params("bdev_delay_update_latency", p)?;
            let rpc = |code, message: &str| bdev_core::Error::Rpc {
                code,
                message: message.into(),
            };
            let latency_type = serde_json::from_value(Value::String(p.latency_type))
                .map_err(|_| rpc(-32602, "Please specify a valid latency type."))?;
            let o = UpdateLatencyOpts {
                delay_bdev_name: p.delay_bdev_name,
                latency_type,
                latency_us: p.latency_us,
            };
            match update_latency(o) {
                Ok(()) => Ok(Value::Bool(true)),
                Err(Error::NotFound { name, .. }) if bdev::get_by_name(&name).is_some() => {
                    Err(rpc(-32600, "The requested bdev is not a delay bdev."))
                }
                Err(Error::NotFound { .. }) => {
                    Err(rpc(-32602, "The requested bdev does not exist."))
                }
                Err(e) => Err(e.into()),
            }
        });
    }
}

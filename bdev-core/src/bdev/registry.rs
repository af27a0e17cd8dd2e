//! Registered bdevs: the name index, registration and unregistration, resize, and the
//! descriptor and claim bookkeeping they need.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use super::channel::ChanCtx;
use super::ops::{BdevOps, DestructDone, ErasedOps, OpsImpl};
use super::{BdevEvent, BdevProps, IoType};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::thread::{IoDevice, ThreadHandle, current_or, with_current};

/// The name index of one runtime: registration order, and names plus aliases.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) list: Vec<Arc<BdevInner>>,
    names: HashMap<String, Arc<BdevInner>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ready,
    Removing,
}

/// An open descriptor, as the bdev knows it.
#[derive(Clone)]
pub(crate) struct DescRec {
    pub(crate) id: u64,
    pub(crate) thread: ThreadHandle,
    pub(crate) write: bool,
}

type UnregisterCb = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) struct BdevState {
    pub(crate) status: Status,
    pub(crate) descs: Vec<DescRec>,
    /// The claiming descriptor and module.
    pub(crate) claim: Option<(u64, String)>,
    unregister: Vec<(ThreadHandle, UnregisterCb)>,
    finishing: bool,
    /// Destructed and out of the registry: a later unregister (through a handle someone
    /// still held) is answered at once.
    finished: bool,
}

pub(crate) struct BdevInner {
    pub(crate) props: BdevProps,
    pub(crate) uuid: Uuid,
    pub(crate) num_blocks: AtomicU64,
    pub(crate) block_len: u32,
    pub(crate) align_mask: usize,
    pub(crate) max_rw: u64,
    pub(crate) max_segs: usize,
    /// Blocks between split points (0: don't split on a boundary).
    pub(crate) boundary: u64,
    /// Largest segment in bytes (`usize::MAX`: no limit).
    pub(crate) max_seg_bytes: usize,
    /// Write zeroes is emulated with writes of a zero buffer (from registration, or since
    /// the device refused the command: [`super::BdevIo::emulate_write_zeroes`]).
    pub(crate) emulate_wz: AtomicBool,
    /// Largest write_zeroes the module takes (`u64::MAX`: no limit).
    pub(crate) max_wz: u64,
    /// Any of the above in force: I/O must be checked against them.
    pub(crate) has_limits: AtomicBool,
    pub(crate) supported: u32,
    pub(crate) ops: Box<dyn ErasedOps>,
    pub(crate) dev: IoDevice<ChanCtx>,
    pub(crate) state: Mutex<BdevState>,
    pub(crate) qos: super::qos::Qos,
    /// A reset is running.
    /// A reset runs, and the number of the last one started.
    pub(crate) reset_busy: Mutex<(bool, u64)>,
    /// A reset has frozen the bdev's channels: one created meanwhile starts frozen.
    pub(crate) frozen: std::sync::atomic::AtomicBool,
    /// Histogram enabled (with its I/O type filter), and what departed channels counted.
    pub(crate) hist_cfg: Mutex<Option<Option<IoType>>>,
    pub(crate) retired_hist: Mutex<Option<super::Histogram>>,
    /// Descriptors with an I/O timeout.
    pub(crate) timeouts: std::sync::atomic::AtomicUsize,
    /// Statistics of channels already destroyed.
    pub(crate) retired: Mutex<super::stats::StatsSum>,
    rt: Weak<Runtime>,
}

impl BdevInner {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BdevState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_removing(&self) -> bool {
        self.lock().status == Status::Removing
    }

    pub(crate) fn claim_module(&self) -> Option<String> {
        self.lock().claim.as_ref().map(|(_, m)| m.clone())
    }

    fn names(&self) -> Vec<String> {
        let mut v = vec![self.props.name.clone()];
        v.extend(self.props.aliases.iter().cloned());
        let u = self.uuid.to_string();
        if !v.contains(&u) {
            v.push(u);
        }
        v
    }

    /// Sends `ev` to every open descriptor, on its opener's thread.
    pub(crate) fn notify(&self, ev: BdevEvent) {
        let descs = self.lock().descs.clone();
        for d in descs {
            let id = d.id;
            if d.thread
                .send_msg(move || super::desc::deliver_event(id, ev))
                .is_err()
            {
                tracing::warn!(bdev = %self.props.name, "descriptor's thread has exited; {ev:?} not delivered");
            }
        }
    }

    /// Runs `f` on every channel of the bdev, each on its thread, and returns when all
    /// have run.
    pub(crate) async fn each_channel(
        &self,
        f: impl Fn(&ChanCtx) + Send + Sync + 'static,
    ) -> Result<()> {
        let (tx, rx) = crate::oneshot::channel();
        self.dev.for_each_channel(
            move |ch, next| {
                f(ch);
                next.next(Ok(()));
            },
            move |r| tx.send(r),
        )?;
        rx.await.unwrap_or(Err(Error::Stopping))
    }

    /// Finishes an unregistration once the last descriptor is closed: waits for every
    /// channel to be released, destructs, removes the names, and reports.
    pub(crate) fn maybe_finish_unregister(self: &Arc<Self>) {
        let origin = {
            let mut st = self.lock();
            if st.status != Status::Removing || !st.descs.is_empty() || st.finishing {
                return;
            }
            st.finishing = true;
            match st.unregister.first() {
                Some((t, _)) => t.clone(),
                None => return,
            }
        };
        let me = self.clone();
        let run = move || {
            let me2 = me.clone();
            let r = me.dev.unregister(move || {
                let me3 = me2.clone();
                me2.ops.destruct(DestructDone {
                    f: Box::new(move || {
                        if let Some(rt) = me3.rt.upgrade() {
                            let mut reg = rt.bdev.registry();
                            reg.names.retain(|_, b| !Arc::ptr_eq(b, &me3));
                            reg.list.retain(|b| !Arc::ptr_eq(b, &me3));
                        }
                        tracing::debug!(bdev = %me3.props.name, "unregistered");
                        let cbs = {
                            let mut st = me3.lock();
                            st.finished = true;
                            std::mem::take(&mut st.unregister)
                        };
                        for (t, cb) in cbs {
                            if t.send_msg(move || cb(Ok(()))).is_err() {
                                tracing::warn!(bdev = %me3.props.name, "unregister caller's thread has exited");
                            }
                        }
                    }),
                });
            });
            if let Err(e) = r {
                tracing::error!(bdev = %me.props.name, "unregistering io_device: {e}");
            }
        };
        if origin.run(run).is_err() {
            tracing::error!(bdev = %self.props.name, "unregister origin thread has exited");
        }
    }
}

/// A registered bdev. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Bdev(pub(crate) Arc<BdevInner>);

impl fmt::Debug for Bdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bdev({})", self.0.props.name)
    }
}

impl PartialEq for Bdev {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Registers a bdev on the current thread's application (`spdk_bdev_register`). Its name,
/// aliases and UUID string must all be free.
pub fn register<T: BdevOps>(mut props: BdevProps, ops: Arc<T>) -> Result<Bdev> {
    let t = current_or("bdev_register")?;
    let rt = t.runtime().clone();
    props.validate()?;
    let uuid = props.uuid.unwrap_or_else(Uuid::new_v4);
    let mut supported = 0;
    for ty in IoType::ALL {
        if ops.io_type_supported(ty) {
            supported |= ty.bit();
        }
    }
    // Write zeroes comes for free on a bdev that writes (SPDK's zero-buffer emulation).
    let emulate_wz =
        supported & IoType::WriteZeroes.bit() == 0 && supported & IoType::Write.bit() != 0;
    if emulate_wz {
        supported |= IoType::WriteZeroes.bit();
    }
    let inner = Arc::new_cyclic(|weak: &Weak<BdevInner>| {
        let w = weak.clone();
        BdevInner {
            uuid,
            num_blocks: AtomicU64::new(props.num_blocks),
            block_len: props.block_len,
            align_mask: props.buf_align - 1,
            max_rw: if props.max_rw_size == 0 {
                u64::MAX
            } else {
                props.max_rw_size as u64
            },
            max_segs: if props.max_num_segments == 0 {
                usize::MAX
            } else {
                props.max_num_segments as usize
            },
            boundary: if props.split_on_optimal_io_boundary {
                props.optimal_io_boundary as u64
            } else {
                0
            },
            max_seg_bytes: if props.max_segment_size == 0 {
                usize::MAX
            } else {
                props.max_segment_size as usize
            },
            emulate_wz: AtomicBool::new(emulate_wz),
            max_wz: if props.max_write_zeroes == 0 {
                u64::MAX
            } else {
                props.max_write_zeroes as u64
            },
            has_limits: AtomicBool::new(
                emulate_wz
                    || props.max_write_zeroes != 0
                    || props.buf_align > 1
                    || props.max_rw_size != 0
                    || props.max_num_segments != 0
                    || props.max_segment_size != 0
                    || (props.split_on_optimal_io_boundary && props.optimal_io_boundary != 0),
            ),
            supported,
            ops: Box::new(OpsImpl(ops)),
            dev: IoDevice::register(format!("bdev_{}", props.name), move || ChanCtx::create(&w)),
            state: Mutex::new(BdevState {
                status: Status::Ready,
                descs: Vec::new(),
                claim: None,
                unregister: Vec::new(),
                finishing: false,
                finished: false,
            }),
            qos: Default::default(),
            reset_busy: Mutex::new((false, 0)),
            frozen: std::sync::atomic::AtomicBool::new(false),
            hist_cfg: Mutex::new(None),
            retired_hist: Mutex::new(None),
            timeouts: std::sync::atomic::AtomicUsize::new(0),
            retired: Mutex::new(Default::default()),
            rt: Arc::downgrade(&rt),
            props,
        }
    });
    let names = inner.names();
    let mut reg = rt.bdev.registry();
    if let Some(n) = names.iter().find(|n| reg.names.contains_key(*n)) {
        return Err(Error::BdevExists { name: n.clone() });
    }
    for n in names {
        reg.names.insert(n, inner.clone());
    }
    reg.list.push(inner.clone());
    drop(reg);
    tracing::debug!(bdev = %inner.props.name, module = inner.ops.module_name(), "registered");
    let b = Bdev(inner);
    crate::module::examine(&b);
    Ok(b)
}

fn runtime() -> Option<Arc<Runtime>> {
    with_current(|t| t.runtime().clone())
}

/// Finds a bdev by name, alias or UUID string in the current thread's application.
pub fn get_by_name(name: &str) -> Option<Bdev> {
    let rt = runtime()?;
    let reg = rt.bdev.registry();
    reg.names.get(name).map(|b| Bdev(b.clone()))
}

/// Every registered bdev, in registration order.
pub fn list() -> Vec<Bdev> {
    match runtime() {
        Some(rt) => rt
            .bdev
            .registry()
            .list
            .iter()
            .map(|b| Bdev(b.clone()))
            .collect(),
        None => Vec::new(),
    }
}

impl Bdev {
    /// The bdev's name.
    pub fn name(&self) -> &str {
        &self.0.props.name
    }

    /// Its aliases (not counting the UUID string, which also opens it).
    pub fn aliases(&self) -> &[String] {
        &self.0.props.aliases
    }

    /// Its UUID.
    pub fn uuid(&self) -> Uuid {
        self.0.uuid
    }

    /// Logical block size in bytes.
    pub fn block_len(&self) -> u32 {
        self.0.block_len
    }

    /// Current number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.0.num_blocks.load(Ordering::Relaxed)
    }

    /// The properties it was registered with (block count as registered).
    pub fn props(&self) -> &BdevProps {
        &self.0.props
    }

    /// The product name.
    pub fn product_name(&self) -> &str {
        &self.0.props.product_name
    }

    /// Name of the module that registered it.
    pub fn module_name(&self) -> &'static str {
        self.0.ops.module_name()
    }

    /// Required buffer alignment in bytes.
    pub fn buf_align(&self) -> usize {
        self.0.align_mask + 1
    }

    /// Whether the bdev handles `io_type`.
    pub fn io_type_supported(&self, io_type: IoType) -> bool {
        self.0.supported & io_type.bit() != 0
    }

    /// The module holding an exclusive-write claim, if any.
    pub fn claimed_by(&self) -> Option<String> {
        self.0.claim_module()
    }

    /// Number of open descriptors.
    pub fn open_descs(&self) -> usize {
        self.0.lock().descs.len()
    }

    /// Whether the bdev is being unregistered.
    pub fn is_removing(&self) -> bool {
        self.0.is_removing()
    }

    /// The config entry that recreates it, from its module.
    pub fn write_config_json(&self) -> Option<serde_json::Value> {
        self.0.ops.write_config_json(self)
    }

    /// The module's own object for this bdev, if the module registered it with type `T`
    /// (SPDK's `bdev->ctxt`): how a module's RPCs reach the bdevs it made.
    pub fn ops<T: BdevOps>(&self) -> Option<Arc<T>> {
        self.0.ops.as_any().downcast_ref::<Arc<T>>().cloned()
    }

    /// Module details for `bdev_get_bdevs`.
    pub fn dump_info_json(&self) -> Option<serde_json::Value> {
        self.0.ops.dump_info_json()
    }

    /// Changes the block count and tells every descriptor (`Resize` event). Shrinking with
    /// descriptors open is refused (`spdk_bdev_notify_blockcnt_change`).
    pub fn notify_blockcnt_change(&self, num_blocks: u64) -> Result<()> {
        if num_blocks == 0 || num_blocks.checked_mul(self.0.block_len as u64).is_none() {
            return Err(Error::invalid(
                "block count",
                format!("{num_blocks} blocks is not a valid size"),
            ));
        }
        {
            let st = self.0.lock();
            let cur = self.0.num_blocks.load(Ordering::Relaxed);
            if num_blocks == cur {
                return Ok(());
            }
            if num_blocks < cur && !st.descs.is_empty() {
                return Err(Error::BdevBusy {
                    name: self.name().to_string(),
                    op: "shrink",
                    open: st.descs.len(),
                });
            }
            self.0.num_blocks.store(num_blocks, Ordering::Relaxed);
        }
        self.0.notify(BdevEvent::Resize);
        Ok(())
    }

    /// Unregisters the bdev (`spdk_bdev_unregister`): open descriptors get a `Remove`
    /// event; once all are closed and every channel released, the module destructs it and
    /// `done` runs on the calling thread. A second unregister waits for the first.
    pub fn unregister(&self, done: impl FnOnce(Result<()>) + Send + 'static) {
        let origin = match current_or("bdev_unregister") {
            Ok(t) => t.handle(),
            Err(e) => return done(Err(e)),
        };
        let first = {
            let mut st = self.0.lock();
            if st.finished {
                drop(st);
                return done(Ok(()));
            }
            let first = st.status == Status::Ready;
            st.status = Status::Removing;
            st.unregister.push((origin, Box::new(done)));
            first
        };
        if first {
            tracing::debug!(bdev = %self.name(), "unregistering");
            self.0.ops.unregistering();
            self.0.notify(BdevEvent::Remove);
        }
        self.0.maybe_finish_unregister();
    }

    /// The bdev's I/O statistics: every channel's, gathered on its thread, plus those of
    /// channels already gone (`bdev_get_iostat`).
    pub async fn iostat(&self) -> Result<super::IoStats> {
        let acc = Arc::new(Mutex::new(
            self.0
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        ));
        let (tx, rx) = crate::oneshot::channel();
        let a = acc.clone();
        self.0.dev.for_each_channel(
            move |ch, next| {
                a.lock().unwrap_or_else(|e| e.into_inner()).add(&ch.stats);
                next.next(Ok(()));
            },
            move |r| tx.send(r),
        )?;
        rx.await.unwrap_or(Err(Error::Stopping))?;
        let s = acc.lock().unwrap_or_else(|e| e.into_inner()).to_iostats();
        Ok(s)
    }

    /// Resets the I/O statistics (`bdev_reset_iostat`): every channel's, on its thread,
    /// and what closed channels left.
    pub async fn reset_iostat(&self, mode: super::ResetMode) -> Result<()> {
        self.0
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset(mode);
        self.0.each_channel(move |c| c.stats.reset(mode)).await
    }

    /// Sets QoS limits (`bdev_set_qos_limit`): `None` leaves a limit as it is, 0 turns it
    /// off. Returns once every channel applies them.
    pub async fn set_qos_limits(&self, limits: [Option<u64>; 4]) -> Result<()> {
        let t = current_or("bdev_set_qos_limit")?;
        self.0.qos.set(limits, t.now(), t.ticks_hz());
        self.0
            .each_channel(move |c| {
                let f = c.flags.get();
                // From the state at the visit, not at the call: two sweeps may reach a
                // channel in either order.
                c.flags.set(if c.bdev.qos.enabled() {
                    f | super::channel::FLAG_QOS
                } else {
                    f & !super::channel::FLAG_QOS
                });
            })
            .await
    }

    /// Turns the latency histogram on, for every I/O type or one (`bdev_enable_histogram`),
    /// or off. Turning it on again starts from zero.
    pub async fn enable_histogram(&self, enable: bool, opc: Option<IoType>) -> Result<()> {
        let cfg = enable.then_some(opc);
        *self.0.hist_cfg.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
        *self
            .0
            .retired_hist
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.0.each_channel(move |c| c.set_histogram(cfg)).await?;
        *self
            .0
            .retired_hist
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Whether the histogram is on, and for which I/O type (`None`: all).
    pub fn histogram_enabled(&self) -> Option<Option<IoType>> {
        *self.0.hist_cfg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latency histogram, every channel's merged (`bdev_get_histogram`); `None` when
    /// it is off.
    pub async fn histogram(&self) -> Result<Option<super::Histogram>> {
        if self.histogram_enabled().is_none() {
            return Ok(None);
        }
        let acc = Arc::new(Mutex::new(
            self.0
                .retired_hist
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default(),
        ));
        let a = acc.clone();
        self.0
            .each_channel(move |c| {
                if let Some((_, h)) = c.hist.borrow().as_ref() {
                    a.lock().unwrap_or_else(|e| e.into_inner()).merge(h);
                }
            })
            .await?;
        let h = acc.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Some(h))
    }

    /// The QoS limits in force (0: none).
    pub fn qos_limits(&self) -> super::QosLimits {
        self.0.qos.limits()
    }

    /// Each channel's statistics with its thread's id (`bdev_get_iostat` `per_channel`).
    pub async fn iostat_per_channel(&self) -> Result<Vec<(u64, super::IoStats)>> {
        let acc = Arc::new(Mutex::new(Vec::new()));
        let a = acc.clone();
        self.0
            .each_channel(move |c| {
                let mut sum = super::stats::StatsSum::default();
                sum.add(&c.stats);
                let id = crate::thread::current().map(|t| t.id()).unwrap_or(0);
                a.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, sum.to_iostats()));
            })
            .await?;
        let v = std::mem::take(&mut *acc.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(v)
    }

    /// [`Bdev::unregister`] as a future.
    pub async fn unregister_async(&self) -> Result<()> {
        let (tx, rx) = crate::oneshot::channel();
        self.unregister(move |r| tx.send(r));
        rx.await.unwrap_or(Err(Error::Stopping))
    }
}

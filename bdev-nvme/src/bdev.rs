//! The bdev glue: `bdev_nvme_attach_controller` connects a controller and registers one
//! bdev per active namespace, named `<name>n<nsid>`; each thread's channel (one per
//! controller, shared by its namespaces) holds that thread's own I/O queue pair, polled
//! by the channel's poller.
//!
//! A channel's queue pair connects in the background when the channel is created; I/O
//! submitted meanwhile waits in the channel and goes out once it is up. A read's or
//! write's data goes straight between the socket buffers and the I/O's own segments
//! (the command's payload is the `BdevIo` itself, [`Payload::IoIn`]/[`Payload::IoOut`]):
//! one copy each way, the one TCP needs.
//!
//! The controller's thread runs a timed admin poller: keep-alive, asynchronous events
//! (namespaces added, removed, resized), and the reconnection after a lost connection
//! with SPDK's three timeouts; controller resets (a bdev reset, `bdev_nvme_reset_controller`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev_core::bdev::{self, Bdev, BdevIo, BdevOps, BdevProps, DestructDone, IoStatus, IoType};
use bdev_core::dma::BufPool;
use bdev_core::thread::{IoChannel, IoDevice, PollStatus, Poller, ThreadHandle};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ctrlr::{ConnectOpts, Controller, Error};
use crate::spec::{self, IdentifyNamespace, nvm, oncs};
use crate::tcp::TcpConnector;
use crate::tcp::pdu::Digests;
use crate::transport::{Completion, Payload, QueuePair, SubmitError};

/// The module's name.
pub const MODULE: &str = "nvme";

/// Params of `bdev_nvme_attach_controller`: every one SPDK's decoder knows, so SPDK's
/// configs and scripts load. Those for features not here yet (end-to-end protection,
/// TLS, DH-HMAC-CHAP, a local address to bind) are refused by name when set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachOpts {
    /// Controller name; its bdevs are `<name>n<nsid>`.
    pub name: String,
    /// Transport: "tcp" (any case).
    pub trtype: String,
    /// Target address.
    pub traddr: String,
    /// Address family: "ipv4" or "ipv6".
    #[serde(default)]
    pub adrfam: Option<String>,
    /// Target port.
    #[serde(default)]
    pub trsvcid: Option<String>,
    /// Subsystem NQN.
    #[serde(default)]
    pub subnqn: Option<String>,
    /// Host NQN (a UUID-based one when absent).
    #[serde(default)]
    pub hostnqn: Option<String>,
    /// Header digest.
    #[serde(default)]
    pub hdgst: bool,
    /// Data digest.
    #[serde(default)]
    pub ddgst: bool,
    /// Seconds to keep trying to reconnect before removing the controller.
    #[serde(default)]
    pub ctrlr_loss_timeout_sec: Option<i64>,
    /// Seconds between reconnection attempts.
    #[serde(default)]
    pub reconnect_delay_sec: Option<u64>,
    /// Seconds after which I/O waiting for a reconnection fails.
    #[serde(default)]
    pub fast_io_fail_timeout_sec: Option<u64>,
    /// Socket priority (SPDK's; accepted, not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Local address to connect from (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostaddr: Option<String>,
    /// Local port to connect from (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostsvcid: Option<String>,
    /// Reference tag checking (end-to-end protection: refused when true).
    #[serde(default)]
    pub prchk_reftag: bool,
    /// Guard checking (end-to-end protection: refused when true).
    #[serde(default)]
    pub prchk_guard: bool,
    /// How long each step of connecting may take, in microseconds (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabrics_connect_timeout_us: Option<u64>,
    /// "disable", "failover" or "multipath": a second path to a controller is a later
    /// issue's, so a name attached twice is refused whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipath: Option<String>,
    /// I/O queues to ask for (default 64; one per thread is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_io_queues: Option<u32>,
    /// TLS pre-shared key (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    /// Most bdev names returned (SPDK's default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bdevs: Option<u32>,
    /// DH-HMAC-CHAP key (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
    /// DH-HMAC-CHAP controller key (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrlr_key: Option<String>,
    /// Namespaces of unknown command sets as bdevs (accepted; NVM namespaces only here).
    #[serde(default)]
    pub allow_unrecognized_csi: bool,
}

impl AttachOpts {
    /// Refuses, by name, what is asked for and not supported.
    fn check_supported(&self) -> Result<(), Error> {
        let refuse = |what: &str| {
            Err(Error::Protocol(format!(
                "{what} is not supported by this NVMe driver"
            )))
        };
        if self.hostaddr.is_some() || self.hostsvcid.is_some() {
            return refuse("hostaddr/hostsvcid (binding a local address)");
        }
        if self.prchk_reftag || self.prchk_guard {
            return refuse("end-to-end protection checking (prchk_reftag/prchk_guard)");
        }
        if self.psk.is_some() {
            return refuse("TLS (psk)");
        }
        if self.dhchap_key.is_some() || self.dhchap_ctrlr_key.is_some() {
            return refuse("DH-HMAC-CHAP authentication");
        }
        self.check_multipath().map_err(Error::Protocol)?;
        if self.num_io_queues == Some(0) {
            return Err(Error::Protocol("num_io_queues must be at least 1".into()));
        }
        Ok(())
    }

    /// A multipath mode SPDK knows (its decoder refuses others).
    pub fn check_multipath(&self) -> Result<(), String> {
        match self.multipath.as_deref() {
            None | Some("disable" | "failover" | "multipath") => Ok(()),
            Some(m) => Err(format!(
                "multipath must be disable, failover or multipath, not {m}"
            )),
        }
    }

    fn io_queues(&self) -> u16 {
        self.num_io_queues.unwrap_or(64).min(65535) as u16
    }
}

/// Options of `bdev_nvme_set_options` that this driver uses (SPDK's names and defaults);
/// SPDK's other options are accepted and ignored, with a warning, so that SPDK's saved
/// configs load; names SPDK does not know are refused ([`NvmeOptions::check`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct NvmeOptions {
    /// Keep-alive timeout of the admin queue, in milliseconds (0: none).
    pub keep_alive_timeout_ms: u32,
    /// Default `ctrlr_loss_timeout_sec` of attached controllers.
    pub ctrlr_loss_timeout_sec: i64,
    /// Default `reconnect_delay_sec`.
    pub reconnect_delay_sec: u64,
    /// Default `fast_io_fail_timeout_sec`.
    pub fast_io_fail_timeout_sec: u64,
    /// I/O outstanding longer than this (microseconds; 0: never) has timed out.
    pub timeout_us: u64,
    /// What a timed-out I/O brings: "none" (a warning), "abort" (an Abort command for
    /// it; the controller is reset if the Abort fails) or "reset" (the controller).
    pub action_on_timeout: String,
    /// Everything else SPDK has (ignored).
    #[serde(flatten, skip_serializing)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        NvmeOptions {
            keep_alive_timeout_ms: 10_000,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            timeout_us: 0,
            action_on_timeout: "none".into(),
            other: serde_json::Map::new(),
        }
    }
}

/// How SPDK's decoder reads an option.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// An unsigned integer up to this.
    Unsigned(u64),
    /// A signed 32-bit integer.
    I32,
    Bool,
    /// An array of strings.
    Strings,
}

/// The options SPDK's `bdev_nvme_set_options` knows (v24.09 and the few added since) that
/// this driver does not use, with their types: accepted with a warning, so that SPDK's
/// saved configs load, and type-checked as SPDK's decoder does.
const SPDK_ONLY_OPTIONS: &[(&str, Kind)] = &[
    ("timeout_admin_us", Kind::Unsigned(u64::MAX)),
    ("arbitration_burst", Kind::Unsigned(u32::MAX as u64)),
    ("low_priority_weight", Kind::Unsigned(u32::MAX as u64)),
    ("medium_priority_weight", Kind::Unsigned(u32::MAX as u64)),
    ("high_priority_weight", Kind::Unsigned(u32::MAX as u64)),
    ("io_queue_requests", Kind::Unsigned(u32::MAX as u64)),
    ("nvme_adminq_poll_period_us", Kind::Unsigned(u64::MAX)),
    ("nvme_ioq_poll_period_us", Kind::Unsigned(u64::MAX)),
    ("delay_cmd_submit", Kind::Bool),
    ("transport_retry_count", Kind::Unsigned(u32::MAX as u64)),
    ("bdev_retry_count", Kind::I32),
    ("transport_ack_timeout", Kind::Unsigned(u8::MAX as u64)),
    ("disable_auto_failback", Kind::Bool),
    ("generate_uuids", Kind::Bool),
    ("transport_tos", Kind::Unsigned(u8::MAX as u64)),
    ("nvme_error_stat", Kind::Bool),
    ("io_path_stat", Kind::Bool),
    ("allow_accel_sequence", Kind::Bool),
    ("rdma_srq_size", Kind::Unsigned(u32::MAX as u64)),
    ("rdma_max_cq_size", Kind::Unsigned(u32::MAX as u64)),
    ("rdma_cm_event_timeout_ms", Kind::Unsigned(u16::MAX as u64)),
    ("dhchap_digests", Kind::Strings),
    ("dhchap_dhgroups", Kind::Strings),
    ("rdma_umr_per_io", Kind::Bool),
    ("tcp_connect_timeout_ms", Kind::Unsigned(u32::MAX as u64)),
    ("enable_flush", Kind::Bool),
];

impl Kind {
    fn admits(self, v: &serde_json::Value) -> bool {
        match self {
            Kind::Unsigned(max) => v.as_u64().is_some_and(|n| n <= max),
            Kind::I32 => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            Kind::Bool => v.is_boolean(),
            Kind::Strings => v
                .as_array()
                .is_some_and(|a| a.iter().all(serde_json::Value::is_string)),
        }
    }

    fn describe(self) -> String {
        match self {
            Kind::Unsigned(max) => format!("an unsigned integer up to {max}"),
            Kind::I32 => "a 32-bit signed integer".into(),
            Kind::Bool => "true or false".into(),
            Kind::Strings => "an array of strings".into(),
        }
    }
}

impl NvmeOptions {
    /// What SPDK's decoder refuses: a name it does not know, a value of the wrong type
    /// or out of its type's range, a bad `action_on_timeout`.
    pub fn check(&self) -> Result<(), String> {
        if !matches!(self.action_on_timeout.as_str(), "none" | "abort" | "reset") {
            return Err(format!(
                "action_on_timeout must be none, abort or reset, not {}",
                self.action_on_timeout
            ));
        }
        for (k, v) in &self.other {
            let Some((_, kind)) = SPDK_ONLY_OPTIONS.iter().find(|(n, _)| n == k) else {
                return Err(format!("unknown field `{k}`"));
            };
            if !kind.admits(v) {
                return Err(format!("`{k}` must be {}, not {v}", kind.describe()));
            }
        }
        Ok(())
    }
}

/// The current application's options.
#[derive(Default)]
pub(crate) struct OptionsCell(pub(crate) Mutex<NvmeOptions>);

/// `bdev_nvme_set_options`.
pub fn set_options(o: NvmeOptions) -> Result<(), Error> {
    // SPDK's rule (and its -1): the options are read when a controller attaches.
    if Ctrlrs::get().is_ok_and(|c| !c.all().is_empty()) {
        return Err(Error::Core(bdev_core::Error::Rpc {
            code: -1,
            message: "RPC not permitted with nvme controllers already attached".into(),
        }));
    }
    o.check().map_err(Error::Protocol)?;
    for k in o.other.keys() {
        tracing::warn!(option = %k, "bdev_nvme_set_options: option not used here, ignored");
    }
    let cell = bdev_core::module::app_data::<OptionsCell>()
        .ok_or(Error::Core(bdev_core::Error::NoThread { op: "nvme" }))?;
    *cell.0.lock().unwrap_or_else(|e| e.into_inner()) = o;
    Ok(())
}

pub(crate) fn options() -> NvmeOptions {
    bdev_core::module::app_data::<OptionsCell>()
        .map(|c| c.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default()
}

/// An attached controller.
pub(crate) struct NvmeCtrlr {
    pub(crate) opts: AttachOpts,
    connect: ConnectOpts,
    icd_max: usize,
    admin: Mutex<Option<Controller>>,
    dev: IoDevice<Chan>,
    /// I/O queue IDs in use (index = qid), up to what the controller granted, and the
    /// one taken last.
    qids: Mutex<(Vec<bool>, usize)>,
    pub(crate) bdevs: Mutex<Vec<Bdev>>,
    /// The thread that attached it: reconnection and removal run there.
    ctl_thread: ThreadHandle,
    state: Mutex<CtrlState>,
    timeouts: Timeouts,
    /// Attached by a discovery service (which saves its own config).
    from_discovery: bool,
    /// I/O timeout in ticks (0: none) and what it brings.
    io_timeout: u64,
    on_timeout: OnTimeout,
    /// From Identify Controller: optional commands, volatile write cache, MDTS.
    oncs: u16,
    vwc: bool,
    mdts: u8,
    /// The NVM command set's Write Zeroes Size Limit (0: none).
    wzsl: u8,
    /// Identify Controller's fields `bdev_get_bdevs` shows (SPDK's `ctrlr_data`).
    ctrlr_data: serde_json::Value,
    /// The controller's VS property (version).
    vs: u32,
}

/// What an I/O timeout brings (SPDK's `action_on_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnTimeout {
    None,
    Abort,
    Reset,
}

/// Where a controller stands after a lost connection (SPDK's reconnect logic).
#[derive(Debug, Default)]
struct CtrlState {
    /// The controller ID queues connect to (a reconnection may get a new one).
    cntlid: u16,
    /// Bumped at every successful reconnection: a channel whose queue pair connected
    /// under an older generation reconnects.
    generation: u64,
    /// Since when the controller has been unreachable.
    failed_at: Option<Instant>,
    reconnecting: bool,
    /// Waiting out reconnect_delay_sec before the next attempt.
    delayed: bool,
    /// Gone after ctrlr_loss_timeout_sec: everything fails.
    removed: bool,
}

/// SPDK's three timeouts, checked at attach as SPDK checks them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// -1: reconnect forever; 0: one attempt, then remove.
    ctrlr_loss_sec: i64,
    reconnect_delay_sec: u64,
    /// 0: I/O waits as long as the controller may come back.
    fast_io_fail_sec: u64,
}

impl Timeouts {
    fn from(o: &AttachOpts) -> Result<Timeouts, Error> {
        let g = options();
        let t = Timeouts {
            ctrlr_loss_sec: o.ctrlr_loss_timeout_sec.unwrap_or(g.ctrlr_loss_timeout_sec),
            reconnect_delay_sec: o.reconnect_delay_sec.unwrap_or(g.reconnect_delay_sec),
            fast_io_fail_sec: o
                .fast_io_fail_timeout_sec
                .unwrap_or(g.fast_io_fail_timeout_sec),
        };
        let bad = |m: &str| Err(Error::Protocol(m.to_string()));
        match t.ctrlr_loss_sec {
            l if l < -1 => bad("ctrlr_loss_timeout_sec must be -1 or more"),
            0 if t.reconnect_delay_sec != 0 || t.fast_io_fail_sec != 0 => bad(
                "reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 when ctrlr_loss_timeout_sec is 0",
            ),
            0 => Ok(t),
            l => {
                if t.reconnect_delay_sec == 0 {
                    return bad(
                        "reconnect_delay_sec must be non-zero when ctrlr_loss_timeout_sec is not 0",
                    );
                }
                if l > 0 && t.reconnect_delay_sec > l as u64 {
                    return bad("reconnect_delay_sec must not exceed ctrlr_loss_timeout_sec");
                }
                if t.fast_io_fail_sec != 0
                    && (t.fast_io_fail_sec < t.reconnect_delay_sec
                        || (l > 0 && t.fast_io_fail_sec > l as u64))
                {
                    return bad(
                        "fast_io_fail_timeout_sec must lie between reconnect_delay_sec and ctrlr_loss_timeout_sec",
                    );
                }
                Ok(t)
            }
        }
    }
}

impl NvmeCtrlr {
    /// A free I/O queue ID, the one after the last taken first: a queue just released
    /// may still be known to the target until its connection's teardown reaches it, and
    /// connecting its ID again then fails (command sequence error).
    fn take_qid(&self) -> Result<u16, Error> {
        let mut g = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        let (q, last) = &mut *g;
        let n = q.len().saturating_sub(1);
        let i = (0..n)
            .map(|k| 1 + (*last + k) % n.max(1))
            .find(|&i| !q[i])
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "controller {}: every I/O queue the controller granted is in use",
                    self.opts.name
                ))
            })?;
        q[i] = true;
        *last = i;
        Ok(i as u16)
    }

    fn release_qid(&self, qid: u16) {
        if let Some(x) = self
            .qids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get_mut(qid as usize)
        {
            *x = false;
        }
    }
}

impl NvmeCtrlr {
    fn st(&self) -> std::sync::MutexGuard<'_, CtrlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A queue pair of generation `generation` was lost: reconnect the controller (on
    /// its thread), once per loss.
    fn report_failure(self: &Arc<Self>, generation: u64) {
        let me = self.clone();
        let sent = self.ctl_thread.send_msg(move || {
            {
                let mut st = me.st();
                if st.removed || st.reconnecting || st.generation != generation {
                    return;
                }
                st.reconnecting = true;
                st.failed_at.get_or_insert_with(Instant::now);
            }
            if let Some(a) = me.admin.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                a.admin.qpair().disconnect("reconnecting the controller");
            }
            let me2 = me.clone();
            if bdev_core::thread::spawn_local(async move { me2.reconnect().await }).is_err() {
                me.st().reconnecting = false;
            }
        });
        if let Err(e) = sent {
            tracing::warn!(ctrlr = %self.opts.name, "reconnect: {e}");
        }
    }

    /// Reconnects the admin queue every reconnect_delay_sec until it works or
    /// ctrlr_loss_timeout_sec passes; then the controller and its bdevs are removed.
    async fn reconnect(self: Arc<Self>) {
        // Every I/O queue goes too (as SPDK resets the whole controller): a target that
        // died without closing its connections would otherwise keep what is in flight on
        // them forever, and healthy queues would stay on the old association. What was
        // in flight waits in its channel, resent after the reconnection (or failed by
        // fast_io_fail_timeout_sec or the controller's removal).
        self.each_channel(|st| {
            if let Some(q) = st.qpair.borrow_mut().as_mut() {
                q.disconnect("reconnecting the controller");
            }
            st.poll();
        })
        .await;
        let t = self.timeouts;
        let mut attempt = 0u32;
        loop {
            let since = self.st().failed_at.map(|f| f.elapsed()).unwrap_or_default();
            let lost = match t.ctrlr_loss_sec {
                -1 => false,
                0 => attempt > 0,
                l => since > Duration::from_secs(l as u64),
            };
            if lost || self.st().removed {
                tracing::error!(ctrlr = %self.opts.name, "controller lost for good: removing it and its bdevs");
                self.remove().await;
                return;
            }
            if attempt > 0 {
                let d = t.reconnect_delay_sec.max(1).saturating_mul(1_000_000);
                self.st().delayed = true;
                let slept = bdev_core::thread::sleep_us(d).await;
                self.st().delayed = false;
                if slept.is_err() {
                    return;
                }
            }
            attempt += 1;
            let timeout = Duration::from_secs(t.reconnect_delay_sec.clamp(1, 10));
            match self.connect_again(timeout).await {
                Ok(()) => {
                    tracing::warn!(ctrlr = %self.opts.name, attempt, "controller reconnected");
                    self.reconnect_channels();
                    return;
                }
                Err(e) => tracing::warn!(ctrlr = %self.opts.name, attempt, "reconnect failed: {e}"),
            }
        }
    }

    /// Connects a new admin queue (a new association: on fabrics, that is what a
    /// controller reset is) and makes it the controller's; channels see a new
    /// generation and connect their queue pairs again.
    async fn connect_again(&self, timeout: Duration) -> Result<(), Error> {
        let mut o = self.connect.clone();
        o.timeout = timeout;
        let mut c = Controller::connect(o).await?;
        c.set_num_queues(self.opts.io_queues()).await?;
        let cntlid = c.cntlid;
        *self.admin.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        let mut st = self.st();
        st.cntlid = cntlid;
        st.generation += 1;
        st.failed_at = None;
        st.reconnecting = false;
        Ok(())
    }

    /// Visits every channel with `f` (on its thread) and waits for the visits to end.
    async fn each_channel(&self, f: fn(&Rc<ChanState>)) {
        let (tx, rx) = bdev_core::oneshot::channel();
        let r = self.dev.for_each_channel(
            move |ch, next| {
                f(&ch.st);
                next.next(Ok(()));
            },
            move |_| tx.send(()),
        );
        if r.is_ok() {
            rx.await;
        }
    }

    /// After a reconnection: every channel without a queue pair connects one now, so
    /// that the first I/O does not wait for it.
    fn reconnect_channels(self: &Arc<Self>) {
        let me = self.clone();
        let r = bdev_core::thread::spawn_local(async move {
            me.each_channel(|st| {
                if st.qpair.borrow().is_none() {
                    ChanState::connect(st);
                }
            })
            .await;
        });
        if let Err(e) = r {
            tracing::warn!(ctrlr = %self.opts.name, "reconnecting channels: {e}");
        }
    }

    /// Sends an Abort for command `cid` of queue `sqid` on the admin queue (from any
    /// thread); if the Abort fails, the controller is reset (SPDK's order).
    fn abort_on_ctl_thread(self: &Arc<Self>, sqid: u16, cid: u16) {
        let me = self.clone();
        let sent = self.ctl_thread.send_msg(move || {
            let mut g = me.admin.lock().unwrap_or_else(|e| e.into_inner());
            let submitted = g.as_mut().map(|c| {
                let mut sqe = spec::Sqe::new(spec::admin::ABORT, 0, 0);
                sqe.cdw10 = (sqid as u32 | (cid as u32) << 16).into();
                c.admin.qpair().submit(sqe, Payload::None, ABORT_TOKEN)
            });
            drop(g);
            match submitted {
                Some(Ok(_)) => tracing::info!(ctrlr = %me.opts.name, sqid, cid, "abort sent"),
                // No admin queue (reconnecting) or a full one: the reset clears it all.
                _ => {
                    tracing::warn!(ctrlr = %me.opts.name, sqid, cid, "abort could not be sent: resetting the controller");
                    drop(me.reset_on_ctl_thread());
                }
            }
        });
        if let Err(e) = sent {
            tracing::warn!(ctrlr = %self.opts.name, "abort: {e}");
        }
    }

    /// Runs [`NvmeCtrlr::reset`] on the controller's thread, from any thread; the
    /// receiver gets its outcome (`None` if it could not run).
    pub(crate) fn reset_on_ctl_thread(
        self: &Arc<Self>,
    ) -> bdev_core::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = bdev_core::oneshot::channel();
        let me = self.clone();
        let sent = self.ctl_thread.send_msg(move || {
            let r = bdev_core::thread::spawn_local(async move {
                tx.send(me.reset().await.map_err(|e| e.to_string()));
            });
            if let Err(e) = r {
                tracing::error!("controller reset: {e}");
            }
        });
        if let Err(e) = sent {
            tracing::error!(ctrlr = %self.opts.name, "controller reset: {e}");
        }
        rx
    }

    /// Resets the controller (a bdev reset, `bdev_nvme_reset_controller`), on the
    /// controller's thread: every channel drops its queue pair (what was in flight is
    /// sent again after), the admin queue is disconnected and a new association made;
    /// then the channels connect again. A reset while another reset runs waits for it;
    /// one while the controller reconnects after a failure fails at once. A failed reset
    /// leaves the controller failed: the reconnection logic takes over, with its timeouts.
    pub(crate) async fn reset(self: Arc<Self>) -> Result<(), Error> {
        loop {
            {
                let mut st = self.st();
                if st.removed {
                    return Err(Error::Protocol(format!(
                        "controller {} has been removed",
                        self.opts.name
                    )));
                }
                if !st.reconnecting {
                    st.reconnecting = true;
                    break;
                }
                if st.failed_at.is_some() {
                    // A reconnection after a failure runs (it may take until
                    // ctrlr_loss_timeout_sec): don't hold the bdev frozen meanwhile.
                    return Err(Error::Protocol(format!(
                        "controller {} is reconnecting after a failure",
                        self.opts.name
                    )));
                }
            }
            // Another reset runs: it ends within its connect timeout.
            bdev_core::thread::sleep_us(10_000).await?;
        }
        tracing::info!(ctrlr = %self.opts.name, "resetting the controller");
        self.each_channel(|st| {
            if let Some(q) = st.qpair.borrow_mut().as_mut() {
                q.disconnect("controller reset");
            }
            // Collects what was in flight for resending, and lets the queue pair go.
            st.poll();
        })
        .await;
        if let Some(mut a) = self.admin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            a.admin.qpair().disconnect("controller reset");
        }
        match self.connect_again(self.connect.timeout).await {
            Ok(()) => {
                tracing::info!(ctrlr = %self.opts.name, "controller reset done");
                self.reconnect_channels();
                Ok(())
            }
            Err(e) => {
                tracing::error!(ctrlr = %self.opts.name, "controller reset failed: {e}");
                let generation = {
                    let mut st = self.st();
                    st.reconnecting = false;
                    st.failed_at.get_or_insert_with(Instant::now);
                    st.generation
                };
                self.report_failure(generation);
                Err(e)
            }
        }
    }

    /// Removes the controller: its bdevs are unregistered (their users see them go).
    async fn remove(&self) {
        if let Ok(ctrlrs) = Ctrlrs::get() {
            ctrlrs
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| c.opts.name != self.opts.name);
        }
        self.shut_down("controller lost").await;
    }

    /// Takes the controller out of service: nothing is retried or polled any more, its
    /// bdevs are unregistered, then its connections and io_device go.
    async fn shut_down(&self, why: &str) {
        self.st().removed = true;
        self.stop_admin_poller();
        let bdevs: Vec<Bdev> =
            std::mem::take(&mut *self.bdevs.lock().unwrap_or_else(|e| e.into_inner()));
        for b in bdevs {
            if let Err(e) = b.unregister_async().await {
                tracing::warn!(bdev = %b.name(), "{why}: {e}");
            }
        }
        self.release(why);
    }

    /// The end of [`NvmeCtrlr::shut_down`], for when the bdevs are gone already (the
    /// application's stop): the admin poller, the admin queue and the io_device (whose
    /// channels close their own queue pairs).
    fn release(&self, why: &str) {
        self.st().removed = true;
        self.stop_admin_poller();
        if let Some(mut a) = self.admin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            a.admin.qpair().disconnect(why);
        }
        let _ = self.dev.unregister(|| {});
    }

    /// The state `bdev_nvme_get_controllers` reports (SPDK's names).
    fn state_name(&self) -> &'static str {
        let st = self.st();
        if st.removed {
            "deleting"
        } else if st.delayed {
            "reconnect_is_delayed"
        } else if st.reconnecting {
            "resetting"
        } else if st.failed_at.is_some() {
            "failed"
        } else {
            "enabled"
        }
    }

    /// Whether I/O waiting for a reconnection should fail now.
    fn fail_io(&self) -> bool {
        let st = self.st();
        st.removed
            || (self.timeouts.fast_io_fail_sec != 0
                && st.failed_at.is_some_and(|f| {
                    f.elapsed() > Duration::from_secs(self.timeouts.fast_io_fail_sec)
                }))
    }
}

/// The token of keep-alive commands on the admin queue.
const KEEP_ALIVE_TOKEN: u64 = u64::MAX;
/// The token of asynchronous event requests.
const AER_TOKEN: u64 = u64::MAX - 1;
/// The token of Abort commands.
const ABORT_TOKEN: u64 = u64::MAX - 2;
/// Asynchronous event requests kept outstanding.
const AERS: u32 = 4;

/// The admin poller's state (on the controller's thread).
struct AdminPoll {
    last_sent: Instant,
    /// A keep-alive in flight since then.
    outstanding: Option<Instant>,
    /// Asynchronous event requests outstanding.
    aers: u32,
    out: Vec<Completion>,
}

/// Admin pollers by controller name, on the thread that owns them.
#[derive(Default)]
struct AdminPollers(RefCell<std::collections::HashMap<String, Poller>>);

impl NvmeCtrlr {
    /// Starts the admin poller on this (the controller's) thread: it polls the admin
    /// queue, sends Keep Alive every half KATO, and reports the controller lost when the
    /// connection fails or a keep-alive goes unanswered for a whole KATO.
    fn start_admin_poller(self: &Arc<Self>) -> Result<(), Error> {
        let me = self.clone();
        let mut ap = AdminPoll {
            last_sent: Instant::now(),
            outstanding: None,
            aers: 0,
            out: Vec::new(),
        };
        let p = Poller::register_us(
            format!("nvme_admin:{}", self.opts.name),
            100_000,
            move || me.admin_tick(&mut ap),
        )?;
        let t = bdev_core::thread::current_or("nvme admin poller")?;
        t.local::<AdminPollers>()
            .0
            .borrow_mut()
            .insert(self.opts.name.clone(), p);
        Ok(())
    }

    fn stop_admin_poller(&self) {
        if let Some(t) = bdev_core::thread::current() {
            if let Some(p) = t.get_local::<AdminPollers>() {
                p.0.borrow_mut().remove(&self.opts.name);
            }
        }
    }

    fn admin_tick(self: &Arc<Self>, ap: &mut AdminPoll) -> PollStatus {
        let (generation, busy) = {
            let st = self.st();
            (st.generation, st.reconnecting || st.removed)
        };
        if busy {
            ap.outstanding = None;
            ap.aers = 0;
            return PollStatus::Idle;
        }
        let kato = Duration::from_millis(self.connect.kato_ms as u64);
        let Ok(mut g) = self.admin.try_lock() else {
            return PollStatus::Idle;
        };
        let Some(c) = g.as_mut() else {
            return PollStatus::Idle;
        };
        let aerl = (c.id.aerl as u32 + 1).min(AERS);
        let q = c.admin.qpair();
        let mut lost = q.poll(&mut ap.out).err();
        let mut rescan = false;
        let mut reset = false;
        for done in ap.out.drain(..) {
            if done.token == KEEP_ALIVE_TOKEN {
                ap.outstanding = None;
            } else if done.token == ABORT_TOKEN {
                // Dword 0 bit 0 set: the command was not aborted (it completes itself).
                if done.status.is_success() {
                    tracing::info!(ctrlr = %self.opts.name, aborted = done.dw0 & 1 == 0, "abort done");
                } else {
                    tracing::warn!(ctrlr = %self.opts.name, status = %done.status, "abort failed: resetting the controller");
                    reset = true;
                }
            } else if done.token == AER_TOKEN {
                ap.aers = ap.aers.saturating_sub(1);
                // Notice (type 2), namespace attribute changed (info 0).
                let (ty, info) = (done.dw0 & 7, (done.dw0 >> 8) & 0xff);
                if done.status.is_success() {
                    tracing::info!(ctrlr = %self.opts.name, ty, info, "asynchronous event");
                    rescan |= ty == 2 && info == 0;
                }
            }
        }
        while lost.is_none() && !rescan && ap.aers < aerl {
            let sqe = spec::Sqe::new(spec::admin::ASYNC_EVENT_REQUEST, 0, 0);
            match q.submit(sqe, Payload::None, AER_TOKEN) {
                Ok(_) => ap.aers += 1,
                Err(SubmitError::Full(..)) => break,
                Err(e) => lost = Some(e.to_string()),
            }
        }
        if lost.is_none() && !kato.is_zero() {
            match ap.outstanding {
                Some(t) if t.elapsed() > kato => {
                    lost = Some("keep alive unanswered".into());
                    q.disconnect("keep alive unanswered");
                }
                Some(_) => {}
                None if ap.last_sent.elapsed() >= kato / 2 => {
                    let sqe = spec::Sqe::new(spec::admin::KEEP_ALIVE, 0, 0);
                    match q.submit(sqe, Payload::None, KEEP_ALIVE_TOKEN) {
                        Ok(_) => {
                            ap.last_sent = Instant::now();
                            ap.outstanding = Some(ap.last_sent);
                        }
                        Err(e) => lost = Some(e.to_string()),
                    }
                }
                None => {}
            }
        }
        drop(g);
        if rescan && lost.is_none() {
            // The controller leaves the mutex while the rescan's commands run: this
            // poller idles meanwhile, and re-arms the event requests afterwards.
            ap.aers = 0;
            ap.outstanding = None;
            let me = self.clone();
            if let Err(e) = bdev_core::thread::spawn_local(async move { me.rescan().await }) {
                tracing::warn!("nvme rescan: {e}");
            }
        }
        if reset && lost.is_none() {
            drop(self.reset_on_ctl_thread());
        }
        if let Some(e) = lost {
            tracing::warn!(ctrlr = %self.opts.name, "admin queue lost: {e}");
            ap.outstanding = None;
            self.report_failure(generation);
        }
        PollStatus::Idle
    }
}

impl NvmeCtrlr {
    /// Registers the bdev of namespace `nsid`; its name, or None (logged) when it can't.
    fn register_ns(self: &Arc<Self>, nsid: u32, ns: &IdentifyNamespace) -> Option<String> {
        const MAX_NLB: u32 = 1 << 16;
        let Some(bs) = ns.block_size() else {
            tracing::warn!(nsid, "namespace with an unusable format skipped");
            return None;
        };
        let name = format!("{}n{nsid}", self.opts.name);
        let uuid = (ns.nguid != [0; 16]).then(|| Uuid::from_bytes(ns.nguid));
        let mut props = BdevProps::new(&name, bs, ns.nsze.get())
            .product_name("NVMe disk")
            .uuid(uuid)
            .write_cache(self.vwc);
        // A command's block count is a 16-bit field (0's based): at most 65536 blocks,
        // less when MDTS (in units of the minimum page, 4 KiB here) says so.
        let mut max = MAX_NLB;
        if self.mdts != 0 {
            max = max.min(((4096u64 << self.mdts.min(20)) / bs as u64).max(1) as u32);
        }
        // Write Zeroes: the same 16-bit count, less when WZSL says so (a drive answers a
        // larger one with Command Size Limit Exceeded, which would switch the bdev to
        // writing zeroes: see `write_zeroes_refused`).
        props = props
            .max_rw_size(max)
            .max_write_zeroes(write_zeroes_blocks(self.wzsl, bs));
        let ops = Arc::new(NsBdev {
            ctrlr: self.clone(),
            nsid,
        });
        match bdev::register(props, ops) {
            Ok(b) => {
                self.bdevs.lock().unwrap_or_else(|e| e.into_inner()).push(b);
                Some(name)
            }
            Err(e) => {
                tracing::error!(bdev = %name, "registering: {e}");
                None
            }
        }
    }

    /// After a namespace change event: reads (and so clears) the changed namespace list,
    /// then adds a bdev for each new namespace, removes those of namespaces gone, and
    /// resizes those whose size changed.
    async fn rescan(self: Arc<Self>) {
        let taken = self.admin.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut c) = taken else { return };
        let r = async {
            let buf = bdev_core::dma::DmaBuf::new(4096, 4096)?;
            c.admin
                .cmd(
                    "Get Log Page Changed Namespaces",
                    spec::get_log_page(0, spec::lid::CHANGED_NS_LIST, 0, 4096, 0),
                    Payload::In(buf, 4096),
                )
                .await?;
            let active = c.active_namespaces().await?;
            let prefix = format!("{}n", self.opts.name);
            let current: Vec<(u32, Bdev)> = self
                .bdevs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter_map(|b| {
                    b.name()
                        .strip_prefix(&prefix)
                        .and_then(|n| n.parse().ok())
                        .map(|n| (n, b.clone()))
                })
                .collect();
            for (nsid, b) in &current {
                if !active.contains(nsid) {
                    tracing::info!(bdev = %b.name(), "namespace removed");
                    self.bdevs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|x| x.name() != b.name());
                    if let Err(e) = b.unregister_async().await {
                        tracing::warn!(bdev = %b.name(), "{e}");
                    }
                } else {
                    let ns = c.identify_ns(*nsid).await?;
                    if ns.nsze.get() != b.num_blocks() {
                        tracing::info!(bdev = %b.name(), blocks = ns.nsze.get(), "namespace resized");
                        if let Err(e) = b.notify_blockcnt_change(ns.nsze.get()) {
                            tracing::warn!(bdev = %b.name(), "{e}");
                        }
                    }
                }
            }
            for nsid in active {
                if !current.iter().any(|(n, _)| *n == nsid) {
                    let ns = c.identify_ns(nsid).await?;
                    if let Some(name) = self.register_ns(nsid, &ns) {
                        tracing::info!(bdev = %name, "namespace added");
                    }
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(ctrlr = %self.opts.name, "namespace rescan: {e}");
        }
        let mut g = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() && !self.st().removed {
            *g = Some(c);
        }
    }
}

/// The controllers of one application.
#[derive(Default)]
pub(crate) struct Ctrlrs(Mutex<Vec<Arc<NvmeCtrlr>>>);

impl Ctrlrs {
    pub(crate) fn get() -> Result<Arc<Ctrlrs>, Error> {
        bdev_core::module::app_data::<Ctrlrs>()
            .ok_or(Error::Core(bdev_core::Error::NoThread { op: "nvme" }))
    }
    pub(crate) fn all(&self) -> Vec<Arc<NvmeCtrlr>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One namespace's bdev.
struct NsBdev {
    ctrlr: Arc<NvmeCtrlr>,
    nsid: u32,
}

/// A thread's channel to a controller: its state, and the poller that drives it (the
/// poller holds the state, not the channel, so dropping the channel stops both).
pub(crate) struct Chan {
    st: Rc<ChanState>,
    _poller: Poller,
    /// Checks the I/O timeout, when one is set.
    _timeouts: Option<Poller>,
}

impl Chan {
    fn new(c: &Arc<NvmeCtrlr>) -> bdev_core::Result<Chan> {
        let st = Rc::new(ChanState::new(c));
        *st.me.borrow_mut() = Rc::downgrade(&st);
        let s2 = st.clone();
        let poller = Poller::register(format!("nvme:{}", c.opts.name), move || s2.poll())?;
        if bdev_core::app::interrupt_mode() {
            let _ = st.intr.set(poller.downgrade());
        }
        let timeouts = if c.io_timeout != 0 {
            let s3 = st.clone();
            let us =
                c.io_timeout as u128 * 1_000_000 / bdev_core::thread::ticks_hz().max(1) as u128;
            let period = (us / 4).clamp(1_000, 1_000_000) as u64;
            Some(Poller::register_us(
                format!("nvme_timeout:{}", c.opts.name),
                period,
                move || s3.check_timeouts(),
            )?)
        } else {
            None
        };
        ChanState::connect(&st);
        Ok(Chan {
            st,
            _poller: poller,
            _timeouts: timeouts,
        })
    }
}

/// An I/O sent on the channel's queue pair.
struct Inflight {
    nsid: u32,
    /// The I/O, unless its command's payload carries it (reads and writes).
    io: Option<BdevIo>,
    /// Its type and first block, for the timeout's report.
    io_type: IoType,
    lba: u64,
    /// Its command ID on the queue pair.
    cid: u16,
    /// When it was sent (ticks; 0 when no timeout is set).
    at: u64,
    /// Its timeout has been acted on.
    timed_out: bool,
}

/// What a thread's channel holds.
pub(crate) struct ChanState {
    ctrlr: std::sync::Weak<NvmeCtrlr>,
    /// The I/O queue ID this channel's queue pair uses (0: none yet).
    qid: Cell<u16>,
    /// The controller generation the queue pair connected under.
    generation: Cell<u64>,
    /// The queue pair was lost: connect again only once the controller has
    /// reconnected (a later generation).
    lost: Cell<bool>,
    /// Itself, to start a reconnection from the poller.
    me: RefCell<std::rc::Weak<ChanState>>,
    qpair: RefCell<Option<Box<dyn QueuePair<BdevIo>>>>,
    /// Waiting for the queue pair (connecting) or for a free command slot.
    waiting: RefCell<VecDeque<(u32, BdevIo)>>,
    inflight: RefCell<slab::Slab<Inflight>>,
    done: RefCell<Vec<Completion<BdevIo>>>,
    pool: BufPool,
    connecting: Cell<bool>,
    /// The controller's I/O timeout, in ticks (0: none).
    io_timeout: u64,
    /// In interrupt mode, the channel's poller, told after each run which fd (if any)
    /// its reactor may sleep on.
    intr: std::cell::OnceCell<bdev_core::thread::PollerRef>,
}

impl Drop for ChanState {
    fn drop(&mut self) {
        if let Some(q) = self.qpair.get_mut().as_mut() {
            q.disconnect("channel released");
        }
        if let Some(c) = self.ctrlr.upgrade() {
            c.release_qid(self.qid.get());
        }
    }
}

/// The most blocks of `bs` bytes one Write Zeroes may cover: the command's 16-bit count,
/// less when WZSL (a power of two of 4 KiB minimum pages; 0: no limit) says so.
fn write_zeroes_blocks(wzsl: u8, bs: u32) -> u32 {
    const MAX_NLB: u64 = 1 << 16;
    if wzsl == 0 {
        return MAX_NLB as u32;
    }
    ((4096u64 << wzsl.min(20)) / bs as u64).clamp(1, MAX_NLB) as u32
}

/// A Write Zeroes answered as a command the namespace does not have.
fn write_zeroes_refused(s: spec::Status) -> bool {
    // By type and code: the Do Not Retry and More bits may be set too.
    matches!(
        (s.sct(), s.sc()),
        (spec::sct::GENERIC, spec::sc::INVALID_OPCODE)
            | (spec::sct::COMMAND_SPECIFIC, spec::sc::CS_NOT_SUPPORTED)
    )
}

fn status_of(s: spec::Status) -> IoStatus {
    if s.is_success() {
        IoStatus::Success
    } else {
        IoStatus::NvmeError {
            sct: s.sct(),
            sc: s.sc(),
        }
    }
}

impl ChanState {
    fn new(c: &Arc<NvmeCtrlr>) -> ChanState {
        ChanState {
            ctrlr: Arc::downgrade(c),
            qid: Cell::new(0),
            generation: Cell::new(0),
            lost: Cell::new(false),
            me: RefCell::new(std::rc::Weak::new()),
            qpair: RefCell::new(None),
            waiting: RefCell::new(VecDeque::new()),
            inflight: RefCell::new(slab::Slab::new()),
            done: RefCell::new(Vec::new()),
            pool: BufPool::new(4096),
            connecting: Cell::new(false),
            io_timeout: c.io_timeout,
            intr: std::cell::OnceCell::new(),
        }
    }

    /// Connects this thread's queue pair in the background (once).
    fn connect(ch: &Rc<ChanState>) {
        if ch.connecting.replace(true) {
            return;
        }
        let Some(c) = ch.ctrlr.upgrade() else { return };
        let ch2 = ch.clone();
        let r = bdev_core::thread::spawn_local(async move {
            let (cntlid, generation) = {
                let st = c.st();
                (st.cntlid, st.generation)
            };
            let qid = match ch2.qid.get() {
                0 => match c.take_qid() {
                    Ok(q) => q,
                    Err(e) => {
                        // Not the controller's failure: this thread has no queue. Its
                        // I/O fails (each new batch tries again, as queues free up).
                        tracing::error!(ctrlr = %c.opts.name, "I/O queue: {e}");
                        ch2.connecting.set(false);
                        ch2.fail_waiting();
                        return;
                    }
                },
                q => q,
            };
            let q = async {
                ch2.qid.set(qid);
                let mut q = crate::ctrlr::Queue::open(&c.connect, qid, 128, c.icd_max).await?;
                q.fabrics_connect(&c.connect, cntlid, 128).await?;
                q.into_qpair().into_io().map_err(Error::Protocol)
            }
            .await;
            match q {
                Ok(q) => {
                    ch2.generation.set(generation);
                    ch2.lost.set(false);
                    *ch2.qpair.borrow_mut() = Some(q);
                    ch2.kick();
                }
                Err(e) => {
                    tracing::error!(ctrlr = %c.opts.name, "I/O queue: {e}");
                    // The controller reconnects (or goes); what waits stays queued.
                    ch2.generation.set(generation);
                    ch2.lost.set(true);
                    c.report_failure(generation);
                }
            }
            ch2.connecting.set(false);
        });
        if r.is_err() {
            ch.connecting.set(false);
        }
    }

    /// Sends what waits, as slots allow.
    fn kick(&self) {
        loop {
            let Some((nsid, io)) = self.waiting.borrow_mut().pop_front() else {
                return;
            };
            if let Err((nsid, io)) = self.send(nsid, io) {
                self.waiting.borrow_mut().push_front((nsid, io));
                return;
            }
        }
    }

    /// Builds and submits `io`'s command; gives it back if the queue can't take it now.
    fn send(&self, nsid: u32, io: BdevIo) -> Result<(), (u32, BdevIo)> {
        let mut qp = self.qpair.borrow_mut();
        let Some(q) = qp.as_mut() else {
            return Err((nsid, io));
        };
        let (t, lba, n) = (io.io_type(), io.offset_blocks(), io.num_blocks());
        // Reads and writes travel with their payload; other commands' I/O waits in the
        // in-flight table.
        let mut held = None;
        let (sqe, payload) = match t {
            // The data goes between the socket and the I/O's own buffers.
            IoType::Read => (
                spec::rw(0, nvm::READ, nsid, lba, n as u32),
                Payload::IoIn(io),
            ),
            IoType::Write => (
                spec::rw(0, nvm::WRITE, nsid, lba, n as u32),
                Payload::IoOut(io),
            ),
            IoType::Flush => {
                held = Some(io);
                (spec::Sqe::new(nvm::FLUSH, 0, nsid), Payload::None)
            }
            IoType::WriteZeroes => {
                held = Some(io);
                (
                    spec::rw(0, nvm::WRITE_ZEROES, nsid, lba, n as u32),
                    Payload::None,
                )
            }
            IoType::Unmap => {
                // One deallocate range per 2^32-1 blocks (ranges of 16 bytes).
                let mut buf = match self.pool.take(4096) {
                    Ok(b) => b,
                    Err(_) => {
                        io.complete(IoStatus::NoMem);
                        return Ok(());
                    }
                };
                let mut nr = 0usize;
                let (mut at, end) = (lba, lba + n);
                while at < end && nr < 256 {
                    let k = (end - at).min(u32::MAX as u64);
                    let r = &mut buf[nr * 16..nr * 16 + 16];
                    r[0..4].fill(0);
                    r[4..8].copy_from_slice(&(k as u32).to_le_bytes());
                    r[8..16].copy_from_slice(&at.to_le_bytes());
                    at += k;
                    nr += 1;
                }
                let mut sqe = spec::Sqe::new(nvm::DATASET_MANAGEMENT, 0, nsid);
                sqe.cdw10 = ((nr - 1) as u32).into();
                sqe.cdw11 = (1u32 << 2).into();
                held = Some(io);
                (sqe, Payload::Out(buf, nr * 16))
            }
            _ => {
                io.complete(IoStatus::Failed);
                return Ok(());
            }
        };
        let mut inflight = self.inflight.borrow_mut();
        let slot = inflight.vacant_entry();
        let token = slot.key() as u64;
        match q.submit(sqe, payload, token) {
            Ok(cid) => {
                let at = if self.io_timeout != 0 {
                    bdev_core::thread::now()
                } else {
                    0
                };
                slot.insert(Inflight {
                    nsid,
                    io: held,
                    cid,
                    at,
                    timed_out: false,
                    io_type: t,
                    lba,
                });
                Ok(())
            }
            Err(SubmitError::Full(_, p)) => match self.take_back(p, held) {
                Some(io) => Err((nsid, io)),
                None => Ok(()),
            },
            Err(SubmitError::Disconnected(e, p) | SubmitError::Invalid(e, p)) => {
                drop(inflight);
                tracing::warn!("nvme submit: {e}");
                if let Some(io) = self.take_back(p, held) {
                    io.complete(IoStatus::Failed);
                }
                Ok(())
            }
        }
    }

    /// The I/O of a command back from its payload (a read or write) or from where it
    /// was held; a pooled buffer goes back to the pool.
    fn take_back(&self, p: Payload<BdevIo>, held: Option<BdevIo>) -> Option<BdevIo> {
        match p {
            Payload::IoIn(io) | Payload::IoOut(io) => Some(io),
            Payload::In(b, _) | Payload::Out(b, _) => {
                self.pool.give(b);
                held
            }
            Payload::None => held,
        }
    }

    /// Polls the queue pair and completes what finished. A lost connection puts what
    /// was in flight back in the waiting queue (resent after the reconnection) and asks
    /// the controller to reconnect; with no queue pair, it reconnects once the
    /// controller has, or fails what waits once fast_io_fail_timeout_sec has passed.
    fn poll(&self) -> PollStatus {
        let mut done = std::mem::take(&mut *self.done.borrow_mut());
        let failed = {
            let mut qp = self.qpair.borrow_mut();
            match qp.as_mut() {
                Some(q) => q.poll(&mut done).err(),
                None => None,
            }
        };
        let busy = !done.is_empty();
        let mut retry = Vec::new();
        for c in done.drain(..) {
            let Some(Inflight { nsid, io, .. }) =
                self.inflight.borrow_mut().try_remove(c.token as usize)
            else {
                continue;
            };
            let transport_abort = failed.is_some()
                && c.status == crate::spec::Status::new(0, crate::spec::sc::ABORTED_SQ_DELETION);
            let status = status_of(c.status);
            let Some(io) = self.take_back(c.payload, io) else {
                continue;
            };
            if transport_abort {
                retry.push((nsid, io));
            } else if io.io_type() == IoType::WriteZeroes && write_zeroes_refused(c.status) {
                // Listed in ONCS, yet not done for this namespace: the bdev layer writes
                // zeroes instead, from now on.
                io.emulate_write_zeroes();
            } else {
                io.complete(status);
            }
        }
        *self.done.borrow_mut() = done;
        if let Some(e) = failed {
            tracing::warn!("nvme I/O queue lost: {e}");
            *self.qpair.borrow_mut() = None;
            self.lost.set(true);
            {
                let mut w = self.waiting.borrow_mut();
                for r in retry.into_iter().rev() {
                    w.push_front(r);
                }
            }
            if let Some(c) = self.ctrlr.upgrade() {
                c.report_failure(self.generation.get());
            }
        }
        if self.qpair.borrow().is_none() {
            self.idle_without_qpair();
        } else if !self.waiting.borrow().is_empty() {
            self.kick();
        }
        if let Some(p) = self.intr.get() {
            // Sleep on the socket only with nothing waiting here for a slot or a queue
            // pair: those need polling.
            let fd = match self.qpair.borrow().as_ref() {
                Some(q) if self.waiting.borrow().is_empty() => q.interrupt_fd(),
                _ => None,
            };
            p.set_interrupt_fd(fd);
        }
        PollStatus::from(busy)
    }

    /// No queue pair: reconnect when the controller is back, fail waiting I/O when the
    /// controller is gone or fast_io_fail_timeout_sec has passed.
    fn idle_without_qpair(&self) {
        if self.connecting.get() {
            return;
        }
        let Some(c) = self.ctrlr.upgrade() else {
            return self.fail_waiting();
        };
        if c.fail_io() {
            return self.fail_waiting();
        }
        let ready = {
            let st = c.st();
            !st.reconnecting
                && st.failed_at.is_none()
                && (!self.lost.get() || st.generation > self.generation.get())
        };
        if ready && !self.waiting.borrow().is_empty() {
            if let Some(me) = self.me.borrow().upgrade() {
                ChanState::connect(&me);
            }
        }
    }

    /// Acts once on each I/O outstanding longer than the timeout: a warning, an Abort
    /// for it, or a controller reset (`action_on_timeout`).
    fn check_timeouts(&self) -> PollStatus {
        let Some(c) = self.ctrlr.upgrade() else {
            return PollStatus::Idle;
        };
        let now = bdev_core::thread::now();
        let qid = self.qid.get();
        let mut late = Vec::new();
        for (_, f) in self.inflight.borrow_mut().iter_mut() {
            if !f.timed_out && now.saturating_sub(f.at) > self.io_timeout {
                f.timed_out = true;
                late.push((f.cid, f.io_type, f.lba));
            }
        }
        if late.is_empty() {
            return PollStatus::Idle;
        }
        for &(cid, t, lba) in &late {
            tracing::warn!(ctrlr = %c.opts.name, qid, cid, io_type = %t, lba, action = ?c.on_timeout, "I/O timed out");
        }
        match c.on_timeout {
            OnTimeout::None => {}
            // One reset at a time: a reset (or a reconnection) under way covers it.
            OnTimeout::Reset if !c.st().reconnecting => drop(c.reset_on_ctl_thread()),
            OnTimeout::Reset => {}
            OnTimeout::Abort => {
                for (cid, ..) in late {
                    c.abort_on_ctl_thread(qid, cid);
                }
            }
        }
        PollStatus::Busy
    }

    fn fail_waiting(&self) {
        let w: Vec<_> = self.waiting.borrow_mut().drain(..).collect();
        for (_, io) in w {
            io.complete(IoStatus::Failed);
        }
    }
}

impl BdevOps for NsBdev {
    type Channel = IoChannel<Chan>;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<IoChannel<Chan>> {
        self.ctrlr.dev.get_channel()
    }

    fn submit_request(&self, ch: &IoChannel<Chan>, io: BdevIo) {
        if io.io_type() == IoType::Reset {
            // The controller's reset: every namespace's I/O on every channel waits
            // while it runs, as in SPDK, where a bdev reset resets the controller.
            let rx = self.ctrlr.reset_on_ctl_thread();
            let r = bdev_core::thread::spawn_local(async move {
                let st = match rx.await {
                    Some(Ok(())) => IoStatus::Success,
                    _ => IoStatus::Failed,
                };
                io.complete(st);
            });
            if let Err(e) = r {
                tracing::error!("nvme reset: {e}");
            }
            return;
        }
        let ch = &*ch.st;
        let waiting = !ch.waiting.borrow().is_empty();
        if waiting || ch.qpair.borrow().is_none() {
            if ch.qpair.borrow().is_none() && self.ctrlr.fail_io() {
                return io.complete(IoStatus::Failed);
            }
            // Sent once the queue pair is (re)connected.
            ch.waiting.borrow_mut().push_back((self.nsid, io));
            return;
        }
        if let Err(w) = ch.send(self.nsid, io) {
            ch.waiting.borrow_mut().push_back(w);
        }
    }

    fn io_type_supported(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset => true,
            IoType::Unmap => self.ctrlr.oncs & oncs::DSM != 0,
            IoType::WriteZeroes => self.ctrlr.oncs & oncs::WRITE_ZEROES != 0,
            _ => false,
        }
    }

    fn destruct(&self, done: DestructDone) {
        done.complete();
    }

    fn dump_info_json(&self) -> Option<serde_json::Value> {
        let mut ctrlr_data = self.ctrlr.ctrlr_data.clone();
        ctrlr_data["cntlid"] = self.ctrlr.st().cntlid.into();
        let vs = self.ctrlr.vs;
        let mut version = format!("{}.{}", vs >> 16, (vs >> 8) & 0xff);
        if vs & 0xff != 0 {
            version += &format!(".{}", vs & 0xff);
        }
        Some(serde_json::json!({"nvme": [{
            "trid": trid_json(&self.ctrlr.opts),
            "ctrlr_data": ctrlr_data,
            "vs": {"nvme_version": version},
            "ns_data": {"id": self.nsid, "can_share": self.ctrlr.ctrlr_data["multi_ctrlr"]},
        }]}))
    }
}

/// How to reach and present ourselves to the controller `o` names, at `addr`: a host NQN
/// (a UUID-based one unless given) and host ID, the digests and connection timeout asked.
pub(crate) fn connect_opts(o: &AttachOpts, addr: SocketAddr) -> Result<ConnectOpts, Error> {
    let subnqn = o
        .subnqn
        .clone()
        .ok_or_else(|| Error::Protocol("subnqn is required".into()))?;
    let host_uuid = Uuid::new_v4();
    Ok(ConnectOpts {
        connector: Arc::new(TcpConnector {
            addr,
            digests: Digests {
                header: o.hdgst,
                data: o.ddgst,
            },
        }),
        subnqn,
        hostnqn: o
            .hostnqn
            .clone()
            .unwrap_or_else(|| format!("nqn.2014-08.org.nvmexpress:uuid:{host_uuid}")),
        hostid: *host_uuid.as_bytes(),
        kato_ms: options().keep_alive_timeout_ms,
        timeout: o
            .fabrics_connect_timeout_us
            .filter(|&t| t > 0)
            .map(Duration::from_micros)
            .unwrap_or(Duration::from_secs(10)),
    })
}

/// The attach's timeouts, checked as SPDK checks them.
pub(crate) fn check_timeouts(o: &AttachOpts) -> Result<Timeouts, Error> {
    Timeouts::from(o)
}

fn trid_json(o: &AttachOpts) -> serde_json::Value {
    serde_json::json!({
        "trtype": "TCP",
        "adrfam": o.adrfam.clone().unwrap_or_else(|| "IPv4".into()).to_uppercase().replace("IPV", "IPv"),
        "traddr": o.traddr,
        "trsvcid": o.trsvcid.clone().unwrap_or_default(),
        "subnqn": o.subnqn.clone().unwrap_or_default(),
    })
}

/// Checks the transport ID's type and port; the host part and port.
fn trid_target(o: &AttachOpts) -> Result<(String, u16), Error> {
    if !o.trtype.eq_ignore_ascii_case("tcp") {
        return Err(Error::Protocol(format!(
            "trtype {} not supported (TCP; PCIe and RDMA to come)",
            o.trtype
        )));
    }
    let port = o.trsvcid.as_deref().unwrap_or("4420");
    let port: u16 = port
        .parse()
        .map_err(|_| Error::Protocol(format!("trsvcid '{port}' is not a port number")))?;
    Ok((o.traddr.clone(), port))
}

/// The socket address of `o`'s target. A host name (from a config, or from a remote
/// target's discovery log) is looked up on a helper OS thread: a resolver can take tens of
/// seconds, and the calling reactor must go on polling meanwhile.
pub(crate) async fn resolve(o: &AttachOpts) -> Result<SocketAddr, Error> {
    let (host, port) = trid_target(o)?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let (tx, rx) = bdev_core::oneshot::channel();
    let h = host.clone();
    std::thread::Builder::new()
        .name("nvme-resolve".into())
        .spawn(move || tx.send((h.as_str(), port).to_socket_addrs().map(|mut a| a.next())))
        .map_err(|e| Error::Transport(format!("traddr {host}: {e}")))?;
    match rx.await {
        Some(Ok(Some(a))) => Ok(a),
        Some(Ok(None)) => Err(Error::Transport(format!("traddr {host}: no address"))),
        Some(Err(e)) => Err(Error::Transport(format!("traddr {host}: {e}"))),
        None => Err(Error::Transport(format!("traddr {host}: lookup ended"))),
    }
}

/// `bdev_nvme_attach_controller`: connects, identifies, registers a bdev per namespace;
/// returns the bdev names.
pub async fn attach(o: AttachOpts) -> Result<Vec<String>, Error> {
    attach_as(o, false).await
}

/// Attaches a controller listed by a discovery service.
pub(crate) async fn attach_discovered(o: AttachOpts) -> Result<Vec<String>, Error> {
    attach_as(o, true).await
}

async fn attach_as(o: AttachOpts, from_discovery: bool) -> Result<Vec<String>, Error> {
    let ctrlrs = Ctrlrs::get()?;
    if o.name.is_empty() {
        return Err(Error::Protocol("controller name must not be empty".into()));
    }
    if o.max_bdevs == Some(0) {
        return Err(Error::Protocol("max_bdevs cannot be zero".into()));
    }
    if ctrlrs.all().iter().any(|c| c.opts.name == o.name) {
        return Err(Error::Protocol(format!(
            "A controller named {} already exists",
            o.name
        )));
    }
    o.check_supported()?;
    let timeouts = check_timeouts(&o)?;
    let g = options();
    // In ticks, saturating: a timeout of centuries is no timeout worth overflowing for.
    let timeout_ticks = (g.timeout_us as u128 * bdev_core::thread::ticks_hz() as u128 / 1_000_000)
        .min(u64::MAX as u128) as u64;
    let on_timeout = match g.action_on_timeout.as_str() {
        "abort" => OnTimeout::Abort,
        "reset" => OnTimeout::Reset,
        _ => OnTimeout::None,
    };
    let ctl_thread = bdev_core::thread::current_or("bdev_nvme_attach_controller")?.handle();
    let addr = resolve(&o).await?;
    let connect = connect_opts(&o, addr)?;
    let mut c = Controller::connect(connect.clone()).await?;
    let granted = c.set_num_queues(o.io_queues()).await?;
    let nsids = c.active_namespaces().await?;
    let mut namespaces: Vec<(u32, Box<IdentifyNamespace>)> = Vec::new();
    for nsid in nsids {
        namespaces.push((nsid, c.identify_ns(nsid).await?));
    }
    let oncs_v = c.id.oncs.get();
    let vwc = c.id.vwc & 1 != 0;
    let mdts = c.id.mdts;
    let wzsl = c.write_zeroes_limit().await?;
    let ctrlr_data = serde_json::json!({
        "vendor_id": format!("{:#06x}", c.id.vid.get()),
        "model_number": spec::get_str(&c.id.mn),
        "serial_number": spec::get_str(&c.id.sn),
        "firmware_revision": spec::get_str(&c.id.fr),
        "subnqn": spec::get_str(&c.id.subnqn),
        "oacs": {"security": c.id.oacs.get() & 1, "format": (c.id.oacs.get() >> 1) & 1,
            "firmware": (c.id.oacs.get() >> 2) & 1, "ns_manage": (c.id.oacs.get() >> 3) & 1},
        "multi_ctrlr": c.id.cmic & 2 != 0,
        "ana_reporting": c.id.cmic & 8 != 0,
    });
    let ctrlr = Arc::new_cyclic(|me: &std::sync::Weak<NvmeCtrlr>| {
        let me = me.clone();
        NvmeCtrlr {
            opts: o.clone(),
            icd_max: c.icd_max(),
            connect,
            admin: Mutex::new(None),
            dev: IoDevice::register(format!("nvme:{}", o.name), move || {
                let c = me.upgrade().ok_or(bdev_core::Error::BdevRemoving {
                    name: "nvme".into(),
                })?;
                Chan::new(&c)
            }),
            bdevs: Mutex::new(Vec::new()),
            qids: Mutex::new((vec![false; granted as usize + 1], 0)),
            ctl_thread,
            state: Mutex::new(CtrlState {
                cntlid: c.cntlid,
                ..Default::default()
            }),
            timeouts,
            from_discovery,
            io_timeout: timeout_ticks,
            on_timeout,
            oncs: oncs_v,
            vwc,
            mdts,
            wzsl,
            ctrlr_data,
            vs: c.vs,
        }
    });
    *ctrlr.admin.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    let mut names = Vec::new();
    for (nsid, ns) in namespaces {
        if let Some(n) = ctrlr.register_ns(nsid, &ns) {
            names.push(n);
        }
    }
    if let Err(e) = ctrlr.start_admin_poller() {
        tracing::error!(ctrlr = %o.name, "admin poller: {e}");
    }
    ctrlrs
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ctrlr);
    // As SPDK: more bdevs than the caller has room for is an error, the controller and
    // its bdevs staying attached (its names are what is lost).
    let max = o.max_bdevs.unwrap_or(128);
    if names.len() > max as usize {
        tracing::error!(ctrlr = %o.name, bdevs = names.len(), "Maximum number of namespaces supported per NVMe controller is {max}. Unable to return all names of created bdevs");
        return Err(Error::TooManyBdevs { max });
    }
    Ok(names)
}

/// `bdev_nvme_detach_controller`: removes the controller's bdevs and disconnects.
/// With path fields in `d` (SPDK's transport fields), only if the controller's path
/// matches every one given: a controller here has one path, so removing it is removing
/// the controller.
pub async fn detach(d: &DetachParams) -> Result<(), Error> {
    let (name, path) = (d.name.as_str(), d);
    let ctrlrs = Ctrlrs::get()?;
    let c = {
        let mut l = ctrlrs.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = l
            .iter()
            .position(|c| c.opts.name == name)
            .ok_or_else(|| Error::Protocol(format!("controller {name} not found")))?;
        if !path.matches(&l[i].opts) {
            return Err(Error::Protocol(format!(
                "controller {name} has no path matching the one given"
            )));
        }
        l.remove(i)
    };
    c.shut_down("detached").await;
    Ok(())
}

/// `bdev_nvme_detach_controller`'s params: the controller, and the path fields it may give
/// (SPDK's names), each of which must match.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachParams {
    /// The controller.
    pub name: String,
    /// Transport type (any case).
    pub trtype: Option<String>,
    /// Address.
    pub traddr: Option<String>,
    /// Address family (any case).
    pub adrfam: Option<String>,
    /// Service id (port).
    pub trsvcid: Option<String>,
    /// Subsystem NQN.
    pub subnqn: Option<String>,
    /// Host address.
    pub hostaddr: Option<String>,
    /// Host service id.
    pub hostsvcid: Option<String>,
}

impl DetachParams {
    /// The whole controller, whatever its path.
    pub fn named(name: &str) -> Self {
        DetachParams {
            name: name.to_string(),
            ..Default::default()
        }
    }

    fn matches(&self, o: &AttachOpts) -> bool {
        let eq = |f: &Option<String>, v: Option<&str>| f.as_deref().is_none_or(|f| Some(f) == v);
        let eq_ci = |f: &Option<String>, v: Option<&str>| {
            f.as_deref()
                .is_none_or(|f| v.is_some_and(|v| v.eq_ignore_ascii_case(f)))
        };
        eq_ci(&self.trtype, Some(&o.trtype))
            && eq(&self.traddr, Some(&o.traddr))
            && eq_ci(&self.adrfam, Some(o.adrfam.as_deref().unwrap_or("ipv4")))
            && eq(&self.trsvcid, o.trsvcid.as_deref())
            && eq(&self.subnqn, o.subnqn.as_deref())
            && eq(&self.hostaddr, o.hostaddr.as_deref())
            && eq(&self.hostsvcid, o.hostsvcid.as_deref())
    }
}

/// At the application's stop (the bdevs are gone by then): every controller lets go of
/// its admin poller and connections.
pub(crate) fn shutdown_all() {
    let Ok(c) = Ctrlrs::get() else { return };
    let all: Vec<Arc<NvmeCtrlr>> =
        std::mem::take(&mut *c.0.lock().unwrap_or_else(|e| e.into_inner()));
    for c in all {
        c.release("application stopping");
    }
}

/// `bdev_nvme_reset_controller`: resets the controller named `name` (whose controller
/// ID must be `cntlid`, when given).
pub async fn reset_controller(name: &str, cntlid: Option<u16>) -> Result<(), Error> {
    let c = Ctrlrs::get()?
        .all()
        .into_iter()
        .find(|c| c.opts.name == name)
        .ok_or_else(|| Error::Protocol(format!("controller {name} not found")))?;
    if let Some(id) = cntlid {
        if c.st().cntlid != id {
            return Err(Error::Protocol(format!(
                "controller {name} has no path with cntlid {id}"
            )));
        }
    }
    match c.reset_on_ctl_thread().await {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(Error::Transport(e)),
        None => Err(Error::Transport(format!(
            "controller {name}: reset did not run"
        ))),
    }
}

/// The `bdev_nvme_attach_controller` calls that recreate the controllers attached by
/// hand (those of a discovery service come back with it).
pub(crate) fn config_json() -> Vec<serde_json::Value> {
    let Ok(c) = Ctrlrs::get() else {
        return Vec::new();
    };
    c.all()
        .iter()
        .filter(|c| !c.from_discovery)
        .map(|c| serde_json::json!({"method": "bdev_nvme_attach_controller", "params": c.opts}))
        .collect()
}

/// `bdev_nvme_get_controllers`.
pub fn controllers(name: Option<&str>) -> Result<Vec<serde_json::Value>, Error> {
    Ok(Ctrlrs::get()?
        .all()
        .iter()
        .filter(|c| name.is_none_or(|n| n == c.opts.name))
        .map(|c| {
            serde_json::json!({
                "name": c.opts.name,
                "ctrlrs": [{
                    "state": c.state_name(),
                    "trid": trid_json(&c.opts),
                    "cntlid": c.st().cntlid,
                    "host": {"nqn": c.connect.hostnqn, "addr": "", "svcid": ""},
                }],
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nvme_options(v: serde_json::Value) -> Result<(), String> {
        serde_json::from_value::<NvmeOptions>(v)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn ignored_options_are_type_checked_as_spdks_decoder_does() {
        // What SPDK's save_config writes for bdev_nvme_set_options loads.
        let saved = serde_json::json!({
            "action_on_timeout": "none", "timeout_us": 0, "timeout_admin_us": 0,
            "keep_alive_timeout_ms": 10000, "arbitration_burst": 0,
            "low_priority_weight": 0, "medium_priority_weight": 0, "high_priority_weight": 0,
            "nvme_adminq_poll_period_us": 10000, "nvme_ioq_poll_period_us": 0,
            "io_queue_requests": 0, "delay_cmd_submit": true, "transport_retry_count": 4,
            "bdev_retry_count": -1, "transport_ack_timeout": 0, "ctrlr_loss_timeout_sec": 0,
            "reconnect_delay_sec": 0, "fast_io_fail_timeout_sec": 0,
            "disable_auto_failback": false, "generate_uuids": false, "transport_tos": 0,
            "nvme_error_stat": false, "rdma_srq_size": 0, "io_path_stat": false,
            "allow_accel_sequence": false, "rdma_max_cq_size": 0,
            "rdma_cm_event_timeout_ms": 0, "dhchap_digests": ["sha256", "sha384", "sha512"],
            "dhchap_dhgroups": ["null", "ffdhe2048"]
        });
        assert_eq!(nvme_options(saved), Ok(()));
        for bad in [
            serde_json::json!({"delay_cmd_submit": 1}),
            serde_json::json!({"transport_tos": 256}),
            serde_json::json!({"bdev_retry_count": 1u64 << 31}),
            serde_json::json!({"transport_retry_count": -1}),
            serde_json::json!({"rdma_cm_event_timeout_ms": "10"}),
            serde_json::json!({"dhchap_digests": ["sha256", 1]}),
            serde_json::json!({"dhchap_dhgroups": "null"}),
            serde_json::json!({"frobnicate": 1}),
        ] {
            let k = bad.as_object().unwrap().keys().next().unwrap().clone();
            let e = nvme_options(bad).unwrap_err();
            assert!(e.contains(&k), "{e}");
        }
    }

    #[test]
    fn write_zeroes_size_follows_wzsl() {
        // No limit: the command's 16-bit count.
        assert_eq!(write_zeroes_blocks(0, 512), 65536);
        // 2^4 pages of 4 KiB = 64 KiB.
        assert_eq!(write_zeroes_blocks(4, 512), 128);
        assert_eq!(write_zeroes_blocks(4, 4096), 16);
        // A page smaller than a block still allows one block; a huge limit, the count.
        assert_eq!(write_zeroes_blocks(1, 65536), 1);
        assert_eq!(write_zeroes_blocks(30, 512), 65536);
        // Refusals: Invalid Opcode and command specific 0x83.
        assert!(write_zeroes_refused(spec::Status::new(
            0,
            spec::sc::INVALID_OPCODE
        )));
        assert!(write_zeroes_refused(spec::Status::new(1, 0x83)));
        assert!(!write_zeroes_refused(spec::Status::new(
            0,
            spec::sc::INTERNAL_ERROR
        )));
    }

    fn opts(loss: Option<i64>, delay: Option<u64>, fio: Option<u64>) -> AttachOpts {
        AttachOpts {
            name: "N".into(),
            trtype: "tcp".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: Some("4420".into()),
            subnqn: Some("nqn.x".into()),
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fio,
            ..Default::default()
        }
    }

    #[test]
    fn timeouts_are_checked_as_spdk_checks_them() {
        for (loss, delay, fio, ok) in [
            (None, None, None, true),
            (Some(0), Some(1), None, false),
            (Some(0), None, Some(1), false),
            (Some(-1), Some(2), None, true),
            (Some(-1), None, None, false),
            (Some(-2), Some(1), None, false),
            (Some(10), Some(2), Some(5), true),
            (Some(10), Some(0), None, false),
            (Some(10), Some(20), None, false),
            (Some(10), Some(5), Some(2), false),
            (Some(10), Some(5), Some(11), false),
        ] {
            let r = Timeouts::from(&opts(loss, delay, fio));
            assert_eq!(r.is_ok(), ok, "{loss:?} {delay:?} {fio:?}: {r:?}");
        }
    }

    #[test]
    fn addresses_and_transports_are_checked() {
        let mut o = opts(None, None, None);
        assert!(trid_target(&o).is_ok());
        o.trtype = "rdma".into();
        assert!(
            trid_target(&o)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        o.trtype = "TCP".into();
        o.trsvcid = Some("port".into());
        assert!(
            trid_target(&o)
                .unwrap_err()
                .to_string()
                .contains("not a port number")
        );
        // A host name is looked up off the thread, and answered on it.
        o.trsvcid = Some("4420".into());
        o.traddr = "localhost".into();
        let h = bdev_core::testing::Harness::new(1);
        let a = h.block_on_real(0, std::time::Duration::from_secs(30), async move {
            resolve(&o).await
        });
        assert!(a.is_ok_and(|a| a.ip().is_loopback() && a.port() == 4420));
    }

    #[test]
    fn spdks_saved_attach_params_load_and_unsupported_ones_are_refused_by_name() {
        // What SPDK v24.09's save_config writes for a TCP controller.
        let spdk = serde_json::json!({
            "name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.0.1",
            "trsvcid": "4420", "subnqn": "nqn.2016-06.io.spdk:cnode1",
            "hostnqn": "nqn.2014-08.org.nvmexpress:uuid:0", "prchk_reftag": false,
            "prchk_guard": false, "ctrlr_loss_timeout_sec": 0, "reconnect_delay_sec": 0,
            "fast_io_fail_timeout_sec": 0, "hdgst": false, "ddgst": false,
            "multipath": "multipath"});
        let o: AttachOpts = serde_json::from_value(spdk).unwrap();
        o.check_supported().unwrap();
        for (k, v, want) in [
            ("psk", serde_json::json!("NVMeTLSkey-1:01:x"), "TLS"),
            ("prchk_guard", serde_json::json!(true), "protection"),
            ("hostaddr", serde_json::json!("10.0.0.2"), "hostaddr"),
            ("dhchap_key", serde_json::json!("key0"), "DH-HMAC-CHAP"),
            (
                "multipath",
                serde_json::json!("sideways"),
                "multipath must be",
            ),
            ("num_io_queues", serde_json::json!(0), "num_io_queues"),
        ] {
            let mut p = serde_json::to_value(opts(None, None, None)).unwrap();
            p[k] = v;
            let o: AttachOpts = serde_json::from_value(p).unwrap();
            let e = o.check_supported().unwrap_err().to_string();
            assert!(e.contains(want), "{k}: {e}");
        }
        // Unknown keys are still refused.
        let mut p = serde_json::to_value(opts(None, None, None)).unwrap();
        p["sideways"] = serde_json::json!(1);
        assert!(serde_json::from_value::<AttachOpts>(p).is_err());
    }

    #[test]
    fn spdk_options_load_and_unknown_ones_are_kept_aside() {
        let o: NvmeOptions = serde_json::from_value(serde_json::json!({
            "keep_alive_timeout_ms": 5000, "action_on_timeout": "abort",
            "transport_retry_count": 4, "bdev_retry_count": 3}))
        .unwrap();
        assert_eq!(o.keep_alive_timeout_ms, 5000);
        assert_eq!(o.action_on_timeout, "abort");
        assert_eq!(o.other.len(), 2);
        let back = serde_json::to_value(&o).unwrap();
        assert!(back.get("bdev_retry_count").is_none());
        assert_eq!(back["action_on_timeout"], "abort");
    }
}

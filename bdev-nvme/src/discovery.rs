//! The discovery service (SPDK's `bdev_nvme_start_discovery` / `_stop_discovery` /
//! `_get_discovery_info`): a connection to a discovery controller whose log page is
//! read at start and again on every Discovery Log Page Change event. Every NVM
//! subsystem the log lists is attached as a controller named `<name><n>` (so its bdevs
//! are `<name><n>n<nsid>`); a subsystem that leaves the log is detached.
//!
//! As in SPDK, a subsystem listed on several ports is attached through the first one
//! only here (the other ports are multipath's, a later issue); referrals (other
//! discovery controllers) are reported, not followed; transports other than TCP are
//! reported and skipped. The discovery controller's connection is kept alive and made
//! again, every `reconnect_delay_sec` (1 s when 0), when it drops.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bdev::{self, AttachOpts};
use crate::ctrlr::{ConnectOpts, Controller, DISCOVERY_NQN, Error};
use crate::spec::{self, DiscoveryLogEntry};
use crate::transport::{Completion, Payload};

/// Params of `bdev_nvme_start_discovery` (SPDK's names).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryOpts {
    /// Prefix of the controllers attached from the log.
    pub name: String,
    /// Transport of the discovery controller: "tcp".
    pub trtype: String,
    /// Its address.
    pub traddr: String,
    /// Address family.
    #[serde(default)]
    pub adrfam: Option<String>,
    /// Its port (8009 when absent, the discovery port).
    #[serde(default)]
    pub trsvcid: Option<String>,
    /// Host NQN.
    #[serde(default)]
    pub hostnqn: Option<String>,
    /// Whether the call returns only once the first log's subsystems are attached.
    #[serde(default)]
    pub wait_for_attach: bool,
    /// With wait_for_attach: how long to wait (0: no limit).
    #[serde(default)]
    pub attach_timeout_ms: u64,
    /// Passed on to the attached controllers.
    #[serde(default)]
    pub ctrlr_loss_timeout_sec: Option<i64>,
    /// Passed on to the attached controllers.
    #[serde(default)]
    pub reconnect_delay_sec: Option<u64>,
    /// Passed on to the attached controllers.
    #[serde(default)]
    pub fast_io_fail_timeout_sec: Option<u64>,
}

/// One entry of the last log read, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct Entry {
    subtype: u8,
    trtype: u8,
    adrfam: u8,
    traddr: String,
    trsvcid: String,
    subnqn: String,
}

impl Entry {
    fn from(e: &DiscoveryLogEntry) -> Entry {
        Entry {
            subtype: e.subtype,
            trtype: e.trtype,
            adrfam: e.adrfam,
            traddr: spec::get_str(&e.traddr),
            trsvcid: spec::get_str(&e.trsvcid),
            subnqn: spec::get_str(&e.subnqn),
        }
    }

    fn trtype_name(&self) -> &'static str {
        match self.trtype {
            1 => "RDMA",
            2 => "FC",
            3 => "TCP",
            254 => "INTRA_HOST",
            _ => "unknown",
        }
    }

    fn trid(&self) -> serde_json::Value {
        serde_json::json!({
            "trtype": self.trtype_name(),
            "adrfam": if self.adrfam == 2 { "IPv6" } else { "IPv4" },
            "traddr": self.traddr,
            "trsvcid": self.trsvcid,
            "subnqn": self.subnqn,
        })
    }
}

/// Subsystem types of log entries.
mod subtype {
    pub const REFERRAL: u8 = 1;
    pub const NVM: u8 = 2;
}

/// A running discovery service.
struct Discovery {
    opts: DiscoveryOpts,
    /// The discovery controller's address.
    addr: std::net::SocketAddr,
    connect: ConnectOpts,
    /// The last log read.
    entries: Mutex<Vec<Entry>>,
    /// Controllers attached from the log: (subsystem NQN, controller name).
    attached: Mutex<Vec<(String, String)>>,
    next_index: AtomicU32,
    stopped: AtomicBool,
}

/// The discovery services of one application.
#[derive(Default)]
pub(crate) struct Discoveries(Mutex<Vec<Arc<Discovery>>>);

fn services() -> Result<Arc<Discoveries>, Error> {
    bdev_core::module::app_data::<Discoveries>().ok_or(Error::Core(bdev_core::Error::NoThread {
        op: "nvme discovery",
    }))
}

/// Where the service puts the outcome of its first pass (for wait_for_attach).
type First = Arc<Mutex<Option<Result<(), String>>>>;

/// Tokens of the discovery poller's own admin commands.
const AER_TOKEN: u64 = u64::MAX - 1;
const KEEP_ALIVE_TOKEN: u64 = u64::MAX;

impl Discovery {
    /// Connects, reads the log and applies it; then waits for log changes, and
    /// reconnects when the connection drops, until stopped. `first` hears the outcome
    /// of the first pass.
    async fn run(self: Arc<Self>, first: First) {
        let mut first = Some(first);
        let delay = Duration::from_secs(self.opts.reconnect_delay_sec.unwrap_or(0).max(1));
        while !self.stopped.load(Ordering::Relaxed) {
            let r = self.session(&mut first).await;
            if let Err(e) = &r {
                tracing::warn!(discovery = %self.opts.name, "discovery controller: {e}");
                if let Some(f) = first.take() {
                    *f.lock().unwrap_or_else(|e| e.into_inner()) = Some(Err(e.to_string()));
                    return;
                }
            }
            if bdev_core::thread::sleep_us(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// One connection to the discovery controller, until it drops or the service stops.
    async fn session(&self, first: &mut Option<First>) -> Result<(), Error> {
        let mut c = Controller::connect(self.connect.clone()).await?;
        // Ask for Discovery Log Page Change notices (Asynchronous Event Configuration,
        // bit 31); a controller that refuses still answers log reads.
        if let Err(e) = c
            .admin
            .cmd(
                "Set Features Asynchronous Event Configuration",
                spec::set_features(0, spec::fid::ASYNC_EVENT_CONFIG, 1 << 31),
                Payload::None,
            )
            .await
        {
            tracing::info!(discovery = %self.opts.name, "{e}");
        }
        let log = c.discovery_log().await?;
        self.apply(&log).await;
        if let Some(f) = first.take() {
            *f.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ok(()));
        }
        let kato = Duration::from_millis(self.connect.kato_ms as u64);
        let mut last_ka = Instant::now();
        let mut aer = false;
        let mut out: Vec<Completion> = Vec::new();
        while !self.stopped.load(Ordering::Relaxed) {
            if !aer {
                let sqe = spec::Sqe::new(spec::admin::ASYNC_EVENT_REQUEST, 0, 0);
                c.admin
                    .qpair()
                    .submit(sqe, Payload::None, AER_TOKEN)
                    .map_err(|e| Error::Transport(e.to_string()))?;
                aer = true;
            }
            if !kato.is_zero() && last_ka.elapsed() >= kato / 2 {
                let sqe = spec::Sqe::new(spec::admin::KEEP_ALIVE, 0, 0);
                c.admin
                    .qpair()
                    .submit(sqe, Payload::None, KEEP_ALIVE_TOKEN)
                    .map_err(|e| Error::Transport(e.to_string()))?;
                last_ka = Instant::now();
            }
            c.admin.poll_unsolicited(&mut out)?;
            let mut changed = false;
            for done in out.drain(..) {
                if done.token == AER_TOKEN {
                    aer = false;
                    // Notice (2), Discovery Log Page Change (0xf0).
                    let (ty, info) = (done.dw0 & 7, (done.dw0 >> 8) & 0xff);
                    changed |= done.status.is_success() && ty == 2 && info == 0xf0;
                }
            }
            if changed {
                tracing::info!(discovery = %self.opts.name, "discovery log changed");
                let log = c.discovery_log().await?;
                self.apply(&log).await;
            }
            bdev_core::thread::sleep_us(100_000).await?;
        }
        c.admin.qpair().disconnect("discovery stopped");
        Ok(())
    }

    /// Attaches the subsystems new in `log`, detaches those gone from it.
    async fn apply(&self, log: &[DiscoveryLogEntry]) {
        let entries: Vec<Entry> = log.iter().map(Entry::from).collect();
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = entries.clone();
        let nvm: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.subtype == subtype::NVM)
            .collect();
        let gone: Vec<(String, String)> = {
            let mut a = self.attached.lock().unwrap_or_else(|e| e.into_inner());
            let (keep, gone): (Vec<_>, Vec<_>) = a
                .drain(..)
                .partition(|(nqn, _)| nvm.iter().any(|e| &e.subnqn == nqn));
            *a = keep;
            gone
        };
        for (nqn, name) in gone {
            tracing::info!(discovery = %self.opts.name, ctrlr = %name, subnqn = %nqn, "subsystem left the discovery log: detaching");
            if let Err(e) = bdev::detach(&bdev::DetachParams::named(&name)).await {
                tracing::warn!(ctrlr = %name, "detach: {e}");
            }
        }
        for e in nvm {
            let known = self
                .attached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(nqn, _)| *nqn == e.subnqn);
            if known {
                continue;
            }
            if e.trtype != 3 {
                tracing::warn!(discovery = %self.opts.name, subnqn = %e.subnqn, trtype = e.trtype_name(), "transport not supported: entry skipped");
                continue;
            }
            let name = format!(
                "{}{}",
                self.opts.name,
                self.next_index.fetch_add(1, Ordering::Relaxed)
            );
            let o = AttachOpts {
                name: name.clone(),
                trtype: "tcp".into(),
                traddr: e.traddr.clone(),
                adrfam: Some(if e.adrfam == 2 { "ipv6" } else { "ipv4" }.into()),
                trsvcid: Some(e.trsvcid.clone()),
                subnqn: Some(e.subnqn.clone()),
                hostnqn: Some(self.connect.hostnqn.clone()),
                hdgst: false,
                ddgst: false,
                ctrlr_loss_timeout_sec: self.opts.ctrlr_loss_timeout_sec,
                reconnect_delay_sec: self.opts.reconnect_delay_sec,
                fast_io_fail_timeout_sec: self.opts.fast_io_fail_timeout_sec,
                ..Default::default()
            };
            match bdev::attach_discovered(o).await {
                Ok(_) if self.stopped.load(Ordering::Relaxed) => {
                    // Stopped while attaching: what stop_discovery detached misses it.
                    if let Err(err) = bdev::detach(&bdev::DetachParams::named(&name)).await {
                        tracing::warn!(ctrlr = %name, "detach: {err}");
                    }
                }
                Ok(bdevs) => {
                    tracing::info!(discovery = %self.opts.name, ctrlr = %name, subnqn = %e.subnqn, ?bdevs, "attached from the discovery log");
                    self.attached
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((e.subnqn.clone(), name));
                }
                // Tried again at the next log change.
                Err(err) => tracing::error!(
                    discovery = %self.opts.name,
                    subnqn = %e.subnqn,
                    traddr = %e.traddr,
                    trsvcid = %e.trsvcid,
                    "attaching a discovered subsystem: {err}"
                ),
            }
        }
    }

    fn info(&self) -> serde_json::Value {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "name": self.opts.name,
            "trid": {
                "trtype": "TCP",
                "adrfam": if self.opts.adrfam.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("ipv6")) { "IPv6" } else { "IPv4" },
                "traddr": self.opts.traddr,
                "trsvcid": self.opts.trsvcid.clone().unwrap_or_else(|| "8009".into()),
                "subnqn": DISCOVERY_NQN,
            },
            "referrals": entries
                .iter()
                .filter(|e| e.subtype == subtype::REFERRAL)
                .map(|e| serde_json::json!({"trid": e.trid()}))
                .collect::<Vec<_>>(),
            // Ours, beyond SPDK's fields: the log as last read, and what it attached.
            "log_entries": entries
                .iter()
                .map(|e| {
                    let mut t = e.trid();
                    t["subtype"] = e.subtype.into();
                    t
                })
                .collect::<Vec<_>>(),
            "ctrlrs": attached.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
        })
    }
}

/// `bdev_nvme_start_discovery`.
pub async fn start(o: DiscoveryOpts) -> Result<(), Error> {
    let svc = services()?;
    if o.name.is_empty() {
        return Err(Error::Protocol("discovery name must not be empty".into()));
    }
    let port = o.trsvcid.clone().unwrap_or_else(|| "8009".into());
    let probe = AttachOpts {
        name: o.name.clone(),
        trtype: o.trtype.clone(),
        traddr: o.traddr.clone(),
        adrfam: o.adrfam.clone(),
        trsvcid: Some(port.clone()),
        subnqn: Some(DISCOVERY_NQN.into()),
        hostnqn: o.hostnqn.clone(),
        hdgst: false,
        ddgst: false,
        ctrlr_loss_timeout_sec: o.ctrlr_loss_timeout_sec,
        reconnect_delay_sec: o.reconnect_delay_sec,
        fast_io_fail_timeout_sec: o.fast_io_fail_timeout_sec,
        ..Default::default()
    };
    // The attached controllers get these; refused now rather than at each attach.
    bdev::check_timeouts(&probe)?;
    let addr = bdev::resolve(&probe).await?;
    {
        let l = svc.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = l.iter().find(|d| d.opts.name == o.name || d.addr == addr) {
            return Err(Error::Exists(format!(
                "discovery service {} already runs (to {})",
                d.opts.name, d.addr
            )));
        }
    }
    let connect = bdev::connect_opts(&probe, addr)?;
    let wait = o.wait_for_attach;
    let wait_ms = o.attach_timeout_ms;
    let d = Arc::new(Discovery {
        opts: o,
        addr,
        connect,
        entries: Mutex::new(Vec::new()),
        attached: Mutex::new(Vec::new()),
        next_index: AtomicU32::new(0),
        stopped: AtomicBool::new(false),
    });
    svc.0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(d.clone());
    let first: First = Arc::new(Mutex::new(None));
    if let Err(e) = bdev_core::thread::spawn_local(d.clone().run(first.clone())) {
        forget(&d);
        return Err(e.into());
    }
    if !wait {
        return Ok(());
    }
    let deadline = (wait_ms != 0)
        .then(|| Instant::now().checked_add(Duration::from_millis(wait_ms)))
        .flatten();
    let outcome = loop {
        if let Some(r) = first.lock().unwrap_or_else(|e| e.into_inner()).take() {
            break r;
        }
        if deadline.is_some_and(|t| Instant::now() > t) {
            break Err(format!("no discovery log within {wait_ms} ms"));
        }
        bdev_core::thread::sleep_us(10_000).await?;
    };
    outcome.map_err(|e| {
        d.stopped.store(true, Ordering::Relaxed);
        forget(&d);
        Error::Transport(format!("discovery service {}: {e}", d.opts.name))
    })
}

fn forget(d: &Arc<Discovery>) {
    if let Ok(svc) = services() {
        svc.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| !Arc::ptr_eq(x, d));
    }
}

/// `bdev_nvme_stop_discovery`: stops the service and detaches what it attached.
pub async fn stop(name: &str) -> Result<(), Error> {
    let svc = services()?;
    let d = {
        let mut l = svc.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = l
            .iter()
            .position(|d| d.opts.name == name)
            .ok_or_else(|| Error::NotFound(format!("discovery service {name} not found")))?;
        l.remove(i)
    };
    d.stopped.store(true, Ordering::Relaxed);
    let attached: Vec<(String, String)> =
        std::mem::take(&mut *d.attached.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, c) in attached {
        if let Err(e) = bdev::detach(&bdev::DetachParams::named(&c)).await {
            tracing::warn!(ctrlr = %c, "stop discovery: {e}");
        }
    }
    Ok(())
}

/// At the application's stop: every discovery service ends.
pub(crate) fn stop_all() {
    if let Ok(svc) = services() {
        for d in std::mem::take(&mut *svc.0.lock().unwrap_or_else(|e| e.into_inner())) {
            d.stopped.store(true, Ordering::Relaxed);
        }
    }
}

/// `bdev_nvme_get_discovery_info`.
pub fn info() -> Result<Vec<serde_json::Value>, Error> {
    Ok(services()?
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|d| d.info())
        .collect())
}

/// The `bdev_nvme_start_discovery` calls that recreate the running services.
pub(crate) fn config_json() -> Vec<serde_json::Value> {
    services()
        .map(|s| {
            s.0.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|d| {
                    serde_json::json!({"method": "bdev_nvme_start_discovery", "params": d.opts})
                })
                .collect()
        })
        .unwrap_or_default()
}

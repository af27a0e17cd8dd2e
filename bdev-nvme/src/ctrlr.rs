//! Bringing up a fabrics controller over a transport's queue pairs: the admin queue's
//! Connect, CAP/VS, CC.EN and CSTS.RDY through Property Get/Set, Identify; I/O queue
//! Connects; namespaces; the discovery log.
//!
//! These are control-plane `async` functions: they submit on the admin queue and poll it
//! between yields of the thread's executor, each with a deadline. (The timed admin
//! poller, keep-alive, AER handling and reconnection build on them next.)

use std::time::{Duration, Instant};

use bdev_core::dma::DmaBuf;
use zerocopy::{FromBytes, IntoBytes};

use crate::spec::{
    self, ConnectData, DiscoveryLogEntry, DiscoveryLogHeader, IdentifyController,
    IdentifyNamespace, Sqe, Status, cns, prop,
};
use crate::transport::{Completion, Connector, FabricsQpair, Payload, SubmitError};

/// The discovery subsystem's NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// What can go wrong talking to a controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection could not be made or was lost.
    #[error("{0}")]
    Transport(String),
    /// A command failed.
    #[error("{what}: NVMe status {status}")]
    Command {
        /// The command.
        what: &'static str,
        /// Its status.
        status: Status,
    },
    /// No answer in time.
    #[error("{0}: timed out")]
    Timeout(&'static str),
    /// The controller answered something unusable.
    #[error("{0}")]
    Protocol(String),
    /// Something of that name or address exists already.
    #[error("{0}")]
    Exists(String),
    /// Nothing of that name.
    #[error("{0}")]
    NotFound(String),
    /// A controller has more namespaces than the bdev names asked for (`max_bdevs`).
    #[error(
        "Maximum number of namespaces supported per NVMe controller is {max}. Unable to return all names of created bdevs"
    )]
    TooManyBdevs {
        /// The caller's `max_bdevs`.
        max: u32,
    },
    /// Memory for a data buffer.
    #[error(transparent)]
    Core(#[from] bdev_core::Error),
}

/// How to reach and present ourselves to a controller.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// Opens the queue pairs (the transport, its address and options).
    pub connector: std::sync::Arc<dyn Connector>,
    /// The subsystem NQN.
    pub subnqn: String,
    /// Our host NQN.
    pub hostnqn: String,
    /// Our host identifier.
    pub hostid: [u8; 16],
    /// Keep-alive timeout in milliseconds (0: none).
    pub kato_ms: u32,
    /// How long each step may take.
    pub timeout: Duration,
}

/// A queue pair with a deadline-bound command helper (the admin queue, or an I/O queue
/// used from the control plane).
pub struct Queue {
    qp: Box<dyn FabricsQpair>,
    token: u64,
    done: Vec<Completion>,
    timeout: Duration,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue({:?})", self.qp)
    }
}

impl Queue {
    /// Connects the transport and finishes its handshake.
    pub async fn open(
        o: &ConnectOpts,
        qid: u16,
        depth: u16,
        icd_max: usize,
    ) -> Result<Queue, Error> {
        let mut qp = o
            .connector
            .open(qid, depth, icd_max, o.timeout)
            .map_err(Error::Transport)?;
        let deadline = Instant::now() + o.timeout;
        let mut done = Vec::new();
        while !qp.is_ready() {
            qp.poll(&mut done).map_err(Error::Transport)?;
            if Instant::now() > deadline {
                return Err(Error::Timeout("NVMe/TCP connection handshake (ICReq)"));
            }
            bdev_core::thread::yield_now().await;
        }
        Ok(Queue {
            qp,
            token: 0,
            done,
            timeout: o.timeout,
        })
    }

    /// The queue pair.
    pub fn qpair(&mut self) -> &mut dyn FabricsQpair {
        &mut *self.qp
    }

    /// Gives the queue pair up (to a channel's poller).
    pub fn into_qpair(self) -> Box<dyn FabricsQpair> {
        self.qp
    }

    /// Runs one command to completion; a failed status is an error named `what`.
    pub async fn cmd(
        &mut self,
        what: &'static str,
        sqe: Sqe,
        payload: Payload,
    ) -> Result<Completion, Error> {
        self.token += 1;
        let token = self.token;
        match self.qp.submit(sqe, payload, token) {
            Ok(_) => {}
            Err(SubmitError::Full(..)) => {
                return Err(Error::Protocol(format!("{what}: queue full")));
            }
            Err(e) => return Err(Error::Transport(format!("{what}: {e}"))),
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Err(e) = self.qp.poll(&mut self.done) {
                return Err(Error::Transport(format!("{what}: {e}")));
            }
            if let Some(i) = self.done.iter().position(|c| c.token == token) {
                let c = self.done.swap_remove(i);
                if !c.status.is_success() {
                    return Err(Error::Command {
                        what,
                        status: c.status,
                    });
                }
                return Ok(c);
            }
            if Instant::now() > deadline {
                self.qp.disconnect(&format!("{what} timed out"));
                return Err(Error::Timeout(what));
            }
            bdev_core::thread::yield_now().await;
        }
    }

    /// Sends Fabrics Connect for this queue to controller `cntlid` (0xffff: a new one for
    /// the admin queue); returns the controller ID.
    pub async fn fabrics_connect(
        &mut self,
        o: &ConnectOpts,
        cntlid: u16,
        depth: u16,
    ) -> Result<u16, Error> {
        let data = ConnectData::new(o.hostid, cntlid, &o.subnqn, &o.hostnqn);
        let mut buf = DmaBuf::new(1024, 64)?;
        buf.copy_from_slice(data.as_bytes());
        let qid = self.qp.qid();
        let kato = if qid == 0 { o.kato_ms } else { 0 };
        let c = self
            .cmd(
                "Fabrics Connect",
                spec::connect_cmd(0, qid, depth.saturating_sub(1), kato),
                Payload::Out(buf, 1024),
            )
            .await
            .map_err(|e| match e {
                // Connect Invalid Parameters / Invalid Host (command specific).
                Error::Command { status, .. }
                    if status.sct() == 1 && matches!(status.sc(), 0x82 | 0x84) =>
                {
                    Error::Protocol(format!(
                        "subsystem {} refused the connection of queue {qid} ({status}): \
                         wrong subnqn, or our host NQN {} not allowed",
                        o.subnqn, o.hostnqn
                    ))
                }
                Error::Command { status, .. } => Error::Protocol(format!(
                    "subsystem {} refused the connection of queue {qid} ({status})",
                    o.subnqn
                )),
                e => e,
            })?;
        Ok(c.dw0 as u16)
    }

    /// Polls the queue and hands over every completion not claimed by [`Queue::cmd`]
    /// (asynchronous event requests, keep-alives sent with the caller's own tokens).
    pub fn poll_unsolicited(&mut self, out: &mut Vec<Completion>) -> Result<(), Error> {
        self.qp.poll(&mut self.done).map_err(Error::Transport)?;
        out.append(&mut self.done);
        Ok(())
    }

    async fn prop_get(&mut self, what: &'static str, ofst: u32, wide: bool) -> Result<u64, Error> {
        let c = self
            .cmd(what, spec::property_get(0, ofst, wide), Payload::None)
            .await?;
        Ok(c.dw0 as u64 | (c.dw1 as u64) << 32)
    }

    async fn read_into<T: FromBytes>(
        &mut self,
        what: &'static str,
        sqe: Sqe,
        len: usize,
    ) -> Result<Box<T>, Error> {
        let buf = DmaBuf::new(len, 4096)?;
        let c = self.cmd(what, sqe, Payload::In(buf, len)).await?;
        let buf = c
            .payload
            .into_buf()
            .ok_or(Error::Protocol(format!("{what}: no data")))?;
        T::read_from_prefix(&buf[..])
            .map(|(t, _)| Box::new(t))
            .map_err(|_| Error::Protocol(format!("{what}: short data")))
    }
}

/// A controller whose admin queue is up.
#[derive(Debug)]
pub struct Controller {
    /// The admin queue.
    pub admin: Queue,
    /// Controller ID.
    pub cntlid: u16,
    /// CAP.
    pub cap: u64,
    /// VS.
    pub vs: u32,
    /// Identify Controller data.
    pub id: Box<IdentifyController>,
    opts: ConnectOpts,
}

impl Controller {
    /// Connects the admin queue, enables the controller and identifies it.
    pub async fn connect(o: ConnectOpts) -> Result<Controller, Error> {
        let mut admin = Queue::open(&o, 0, 32, 8192).await?;
        let cntlid = admin.fabrics_connect(&o, 0xffff, 32).await?;
        let cap = admin.prop_get("Property Get CAP", prop::CAP, true).await?;
        let vs = admin.prop_get("Property Get VS", prop::VS, false).await? as u32;
        // EN, NVM command set, 4 KiB pages, round robin, 64-byte SQEs, 16-byte CQEs.
        let cc = 1 | 6 << 16 | 4 << 20;
        admin
            .cmd(
                "Property Set CC",
                spec::property_set(0, prop::CC, cc),
                Payload::None,
            )
            .await?;
        // CAP.TO: worst time to ready, in 500 ms units.
        let to = Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500);
        let deadline = Instant::now() + to.max(o.timeout);
        loop {
            let csts = admin
                .prop_get("Property Get CSTS", prop::CSTS, false)
                .await?;
            if csts & 2 != 0 {
                return Err(Error::Protocol("controller fatal status (CSTS.CFS)".into()));
            }
            if csts & 1 != 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout("controller ready (CSTS.RDY)"));
            }
            bdev_core::thread::yield_now().await;
        }
        let id: Box<IdentifyController> = admin
            .read_into(
                "Identify Controller",
                spec::identify(0, cns::CONTROLLER, 0),
                4096,
            )
            .await?;
        tracing::info!(
            cntlid,
            model = %spec::get_str(&id.mn),
            serial = %spec::get_str(&id.sn),
            subnqn = %spec::get_str(&id.subnqn),
            "NVMe controller ready"
        );
        Ok(Controller {
            admin,
            cntlid,
            cap,
            vs,
            id,
            opts: o,
        })
    }

    /// The largest write carried in an I/O capsule (IOCCSZ less the command itself).
    pub fn icd_max(&self) -> usize {
        (self.id.ioccsz.get() as usize * 16).saturating_sub(64)
    }

    /// Connects I/O queue `qid` of `depth` entries to this controller.
    pub async fn connect_io_queue(&self, qid: u16, depth: u16) -> Result<Queue, Error> {
        let mut q = Queue::open(&self.opts, qid, depth, self.icd_max()).await?;
        q.fabrics_connect(&self.opts, self.cntlid, depth).await?;
        Ok(q)
    }

    /// Asks for `n` I/O queues; returns how many the controller grants.
    pub async fn set_num_queues(&mut self, n: u16) -> Result<u16, Error> {
        let v = (n.max(1) - 1) as u32;
        let c = self
            .admin
            .cmd(
                "Set Features Number of Queues",
                spec::set_features(0, spec::fid::NUMBER_OF_QUEUES, v | v << 16),
                Payload::None,
            )
            .await?;
        // Zero-based counts; 0xffff is reserved, and more than asked is of no use.
        let granted = (c.dw0 & 0xffff).min(c.dw0 >> 16) + 1;
        Ok(granted.min(n.max(1) as u32) as u16)
    }

    /// The NVM command set's Write Zeroes Size Limit (WZSL): the largest Write Zeroes in
    /// minimum pages, as a power of two; 0 for none. From NVMe 1.4 on (Identify CNS 06h,
    /// CSI 0); 0 before, or when the controller refuses the Identify, as Linux's host
    /// takes it.
    pub async fn write_zeroes_limit(&mut self) -> Result<u8, Error> {
        if self.vs < 0x0001_0400 {
            return Ok(0);
        }
        let buf = DmaBuf::new(4096, 4096)?;
        let r = self
            .admin
            .cmd(
                "Identify Controller (NVM command set)",
                spec::identify(0, cns::CS_CONTROLLER, 0),
                Payload::In(buf, 4096),
            )
            .await;
        match r {
            Ok(c) => Ok(c.payload.into_buf().map_or(0, |b| b[1])),
            Err(Error::Command { .. }) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The active namespace IDs.
    pub async fn active_namespaces(&mut self) -> Result<Vec<u32>, Error> {
        let buf = DmaBuf::new(4096, 4096)?;
        let c = self
            .admin
            .cmd(
                "Identify Active Namespace List",
                spec::identify(0, cns::ACTIVE_NS_LIST, 0),
                Payload::In(buf, 4096),
            )
            .await?;
        let buf = c
            .payload
            .into_buf()
            .ok_or(Error::Protocol("no namespace list".into()))?;
        Ok(buf
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .take_while(|&n| n != 0)
            .collect())
    }

    /// Identify Namespace for `nsid`.
    pub async fn identify_ns(&mut self, nsid: u32) -> Result<Box<IdentifyNamespace>, Error> {
        self.admin
            .read_into(
                "Identify Namespace",
                spec::identify(0, cns::NAMESPACE, nsid),
                4096,
            )
            .await
    }

    /// The discovery log (on a discovery controller).
    pub async fn discovery_log(&mut self) -> Result<Vec<DiscoveryLogEntry>, Error> {
        let hdr: Box<DiscoveryLogHeader> = self
            .admin
            .read_into(
                "Get Log Page Discovery",
                spec::get_log_page(0, spec::lid::DISCOVERY, 0, 1024, 0),
                1024,
            )
            .await?;
        let n = (hdr.numrec.get() as usize).min(1024);
        if n == 0 {
            return Ok(Vec::new());
        }
        let len = 1024 * (n + 1);
        let buf = DmaBuf::new(len, 4096)?;
        let c = self
            .admin
            .cmd(
                "Get Log Page Discovery",
                spec::get_log_page(0, spec::lid::DISCOVERY, 0, len as u32, 0),
                Payload::In(buf, len),
            )
            .await?;
        let buf = c
            .payload
            .into_buf()
            .ok_or(Error::Protocol("no discovery log".into()))?;
        Ok(buf[1024..len]
            .chunks_exact(1024)
            .filter_map(|e| DiscoveryLogEntry::read_from_bytes(e).ok())
            .collect())
    }
}

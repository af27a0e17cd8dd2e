//! The NVMe/TCP transport: PDUs ([`pdu`]) and queue pairs ([`qpair`]).

pub mod pdu;
pub mod qpair;

pub use qpair::TcpQpair;

use std::net::SocketAddr;
use std::time::Duration;

use bdev_core::bdev::BdevIo;

use crate::transport::{Connector, FabricsQpair, NoIo, QueuePair};

/// Opens NVMe/TCP queue pairs to one address, with the digests asked for.
#[derive(Clone, Copy, Debug)]
pub struct TcpConnector {
    /// The controller's address.
    pub addr: SocketAddr,
    /// Header and data digests to ask for.
    pub digests: pdu::Digests,
}

impl Connector for TcpConnector {
    fn trtype(&self) -> &'static str {
        "TCP"
    }

    fn peer(&self) -> String {
        self.addr.to_string()
    }

    fn open(
        &self,
        qid: u16,
        depth: u16,
        icd_max: usize,
        timeout: Duration,
    ) -> Result<Box<dyn FabricsQpair>, String> {
        let q: TcpQpair<NoIo> =
            TcpQpair::connect(self.addr, qid, depth, self.digests, icd_max, timeout)?;
        Ok(Box::new(q))
    }
}

impl FabricsQpair for TcpQpair<NoIo> {
    fn is_ready(&self) -> bool {
        TcpQpair::is_ready(self)
    }

    fn into_io(self: Box<Self>) -> Result<Box<dyn QueuePair<BdevIo>>, String> {
        let q: TcpQpair<BdevIo> = TcpQpair::into_io(*self)?;
        Ok(Box::new(q))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

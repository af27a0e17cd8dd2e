//! What every NVMe transport offers the controller and the bdev glue: queue pairs that
//! take commands with their data and give back completions, polled by the thread that
//! owns them (no thread per connection, no callback per I/O).
//!
//! - **TCP** ([`crate::tcp`]): a queue pair is a connection; data travels in capsules,
//!   C2HData and R2T-driven H2CData PDUs.
//! - **PCIe over VFIO** (to come): a queue pair is a submission/completion ring pair in
//!   DMA memory with doorbells; data is described by PRPs or SGLs of IOVAs.
//! - **RDMA** (to come): a queue pair is an RC queue pair; data moves by RDMA read/write
//!   against keyed SGLs.
//!
//! Commands are identified by a caller's `token` (the bdev glue's slot, a control-plane
//! waiter), handed back in the [`Completion`] with the command's data buffer, so a
//! transport allocates nothing per command and never calls back into its caller.

use bdev_core::dma::DmaBuf;

use crate::spec::{Sqe, Status};

/// A command's data.
#[derive(Debug, Default)]
pub enum Payload {
    /// No data.
    #[default]
    None,
    /// The controller fills `len` bytes of the buffer (a read, an identify, a log page).
    In(DmaBuf, usize),
    /// The controller takes `len` bytes of the buffer (a write, Connect's data).
    Out(DmaBuf, usize),
}

impl Payload {
    /// Bytes transferred.
    pub fn len(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::In(_, n) | Payload::Out(_, n) => *n,
        }
    }

    /// Whether no data moves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer back.
    pub fn into_buf(self) -> Option<DmaBuf> {
        match self {
            Payload::None => None,
            Payload::In(b, _) | Payload::Out(b, _) => Some(b),
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Completion {
    /// The token it was submitted with.
    pub token: u64,
    /// Its status; a transport failure reads as an abort (SQ deletion) with DNR clear, so
    /// that the caller may retry on another connection.
    pub status: Status,
    /// Dword 0 of the completion (Connect's controller ID, a property's value...).
    pub dw0: u32,
    /// Dword 1.
    pub dw1: u32,
    /// The data buffer back.
    pub payload: Payload,
}

/// Why a queue pair can't take a command now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// Every command slot is in use: try after a completion.
    #[error("queue full")]
    Full(Sqe, Payload),
    /// The connection is gone: reconnect.
    #[error("queue pair disconnected: {0}")]
    Disconnected(String),
    /// The command can't be carried (data larger than the transport allows, say).
    #[error("{0}")]
    Invalid(String),
}

/// A queue pair of some transport.
pub trait QueuePair {
    /// The queue ID (0: admin).
    fn qid(&self) -> u16;
    /// Sends `sqe` (its command ID is the transport's to set) with `payload`; `token`
    /// comes back in the completion. Returns the command ID given (what an Abort names).
    fn submit(&mut self, sqe: Sqe, payload: Payload, token: u64) -> Result<u16, SubmitError>;
    /// Moves bytes and appends what completed to `out`; returns how many completed.
    /// A transport failure completes everything outstanding (aborted) and then fails.
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize, String>;
    /// Commands submitted and not completed.
    fn outstanding(&self) -> usize;
    /// Drops the connection; what is outstanding completes aborted at the next poll.
    fn disconnect(&mut self, why: &str);
}

//! What every NVMe transport offers the controller and the bdev glue: queue pairs that
//! take commands with their data and give back completions, polled by the thread that
//! owns them (no thread per connection, no callback per I/O).
//!
//! - **TCP** ([`crate::tcp`]): a queue pair is a connection; data travels in capsules,
//!   C2HData and R2T-driven H2CData PDUs. [`crate::tcp::TcpConnector`] opens them.
//! - **PCIe over VFIO** (to come): a queue pair is a submission/completion ring pair in
//!   DMA memory with doorbells; data is described by PRPs or SGLs of IOVAs.
//! - **RDMA** (to come): a queue pair is an RC queue pair; data moves by RDMA read/write
//!   against keyed SGLs; a [`Connector`] of its own opens them.
//!
//! Commands are identified by a caller's `token` (the bdev glue's slot, a control-plane
//! waiter), handed back in the [`Completion`] with the command's data buffer, so a
//! transport allocates nothing per command and never calls back into its caller.

use std::time::Duration;

use bdev_core::bdev::BdevIo;
use bdev_core::dma::DmaBuf;

use crate::spec::{Sqe, Status};

/// The caller's own buffers a command's data may live in (a [`BdevIo`]'s segments),
/// instead of a [`DmaBuf`] of the transport's: how a bdev's reads and writes go without
/// a bounce copy. [`NoIo`] for queues that never carry them (admin, control plane).
pub trait IoData: std::fmt::Debug {
    /// Bytes of data.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `data` in at byte `off`; false if it does not fit.
    fn write_at(&mut self, off: usize, data: &[u8]) -> bool;
    /// Hands `len` bytes from `off` to `f`, a slice at a time; false if not all there.
    fn read_range(&self, off: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> bool;
}

/// No caller buffers: what a control-plane queue carries.
#[derive(Debug)]
pub enum NoIo {}

impl IoData for NoIo {
    fn len(&self) -> usize {
        match *self {}
    }
    fn write_at(&mut self, _: usize, _: &[u8]) -> bool {
        match *self {}
    }
    fn read_range(&self, _: usize, _: usize, _: &mut dyn FnMut(&[u8])) -> bool {
        match *self {}
    }
}

impl IoData for BdevIo {
    fn len(&self) -> usize {
        self.len_bytes() as usize
    }

    fn write_at(&mut self, off: usize, data: &[u8]) -> bool {
        if off
            .checked_add(data.len())
            .is_none_or(|e| e > IoData::len(self))
        {
            return false;
        }
        let mut sc = Scatter::new(off, data);
        self.for_each_segment_mut(|seg| sc.visit(seg));
        sc.finished()
    }

    fn read_range(&self, off: usize, len: usize, f: &mut dyn FnMut(&[u8])) -> bool {
        let mut g = Gather::new(off, len);
        self.for_each_segment(|seg| g.visit(seg, f));
        g.finished()
    }
}

/// Copies a run of bytes into a sequence of segments, from byte `off` of their
/// concatenation, one segment at a time.
struct Scatter<'d> {
    off: usize,
    data: &'d [u8],
    /// Where the next segment starts in the concatenation.
    at: usize,
    /// Bytes copied so far.
    done: usize,
}

impl<'d> Scatter<'d> {
    fn new(off: usize, data: &'d [u8]) -> Self {
        Scatter {
            off,
            data,
            at: 0,
            done: 0,
        }
    }

    fn visit(&mut self, seg: &mut [u8]) {
        let (s, e) = (self.at, self.at + seg.len());
        self.at = e;
        let from = self.off + self.done;
        if self.done == self.data.len() || from >= e || from < s {
            return;
        }
        let k = (e - from).min(self.data.len() - self.done);
        seg[from - s..from - s + k].copy_from_slice(&self.data[self.done..self.done + k]);
        self.done += k;
    }

    fn finished(&self) -> bool {
        self.done == self.data.len()
    }
}

/// Hands out the bytes `off..off + len` of a sequence of segments' concatenation, one
/// segment at a time.
struct Gather {
    off: usize,
    end: usize,
    at: usize,
    done: usize,
}

impl Gather {
    fn new(off: usize, len: usize) -> Self {
        Gather {
            off,
            end: off.saturating_add(len),
            at: 0,
            done: 0,
        }
    }

    fn visit(&mut self, seg: &[u8], f: &mut dyn FnMut(&[u8])) {
        let (s, e) = (self.at, self.at + seg.len());
        self.at = e;
        let (a, b) = (s.max(self.off), e.min(self.end));
        if a < b {
            f(&seg[a - s..b - s]);
            self.done += b - a;
        }
    }

    fn finished(&self) -> bool {
        self.done == self.end - self.off
    }
}

/// A command's data.
#[derive(Debug)]
pub enum Payload<T = NoIo> {
    /// No data.
    None,
    /// The controller fills `len` bytes of the buffer (a read, an identify, a log page).
    In(DmaBuf, usize),
    /// The controller takes `len` bytes of the buffer (a write, Connect's data).
    Out(DmaBuf, usize),
    /// The controller fills the caller's own buffers (a bdev read, placed directly).
    IoIn(T),
    /// The controller takes the data from the caller's own buffers (a bdev write).
    IoOut(T),
}

// Not derived: derive(Default) would ask `T: Default`, which an I/O isn't.
#[allow(clippy::derivable_impls)]
impl<T> Default for Payload<T> {
    fn default() -> Self {
        Payload::None
    }
}

impl<T: IoData> Payload<T> {
    /// Bytes transferred.
    pub fn len(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::In(_, n) | Payload::Out(_, n) => *n,
            Payload::IoIn(io) | Payload::IoOut(io) => io.len(),
        }
    }

    /// Whether the controller writes into it (a read's data).
    pub fn is_in(&self) -> bool {
        matches!(self, Payload::In(..) | Payload::IoIn(_))
    }

    /// Whether the controller takes data from it (a write's data).
    pub fn is_out(&self) -> bool {
        matches!(self, Payload::Out(..) | Payload::IoOut(_))
    }

    /// Copies received `data` in at byte `off` (of an `In` payload); false if it does
    /// not fit, or the payload takes no data.
    pub fn write_at(&mut self, off: usize, data: &[u8]) -> bool {
        let end = off.checked_add(data.len());
        if end.is_none_or(|e| e > self.len()) {
            return false;
        }
        match self {
            Payload::In(b, _) => match b.get_mut(off..off + data.len()) {
                Some(d) => {
                    d.copy_from_slice(data);
                    true
                }
                None => false,
            },
            Payload::IoIn(io) => io.write_at(off, data),
            _ => false,
        }
    }

    /// Hands `len` bytes from byte `off` (of an `Out` payload) to `f`, a slice at a
    /// time; false if they are not all there.
    pub fn read_range(&self, off: usize, len: usize, mut f: impl FnMut(&[u8])) -> bool {
        if off.checked_add(len).is_none_or(|e| e > self.len()) {
            return false;
        }
        match self {
            Payload::Out(b, _) => match b.get(off..off + len) {
                Some(d) => {
                    f(d);
                    true
                }
                None => false,
            },
            Payload::IoOut(io) => io.read_range(off, len, &mut f),
            _ => false,
        }
    }

    /// Whether no data moves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer back.
    pub fn into_buf(self) -> Option<DmaBuf> {
        match self {
            Payload::In(b, _) | Payload::Out(b, _) => Some(b),
            _ => None,
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Completion<T = NoIo> {
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
    pub payload: Payload<T>,
}

/// Why a queue pair can't take a command now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError<T: IoData = NoIo> {
    /// Every command slot is in use: try after a completion.
    #[error("queue full")]
    Full(Sqe, Payload<T>),
    /// The connection is gone: reconnect. The payload comes back.
    #[error("queue pair disconnected: {0}")]
    Disconnected(String, Payload<T>),
    /// The command can't be carried (data larger than the transport allows, say). The
    /// payload comes back.
    #[error("{0}")]
    Invalid(String, Payload<T>),
}

/// A queue pair of some transport.
pub trait QueuePair<T: IoData = NoIo> {
    /// The queue ID (0: admin).
    fn qid(&self) -> u16;
    /// Sends `sqe` (its command ID is the transport's to set) with `payload`; `token`
    /// comes back in the completion. Returns the command ID given (what an Abort names).
    fn submit(&mut self, sqe: Sqe, payload: Payload<T>, token: u64) -> Result<u16, SubmitError<T>>;
    /// Moves bytes and appends what completed to `out`; returns how many completed.
    /// A transport failure completes everything outstanding (aborted) and then fails.
    fn poll(&mut self, out: &mut Vec<Completion<T>>) -> Result<usize, String>;
    /// Commands submitted and not completed.
    fn outstanding(&self) -> usize;
    /// Drops the connection; what is outstanding completes aborted at the next poll.
    fn disconnect(&mut self, why: &str);
    /// For interrupt mode: an fd that becomes readable when the queue pair has work for
    /// `poll` (a completion arriving), or `None` while it must be polled (bytes waiting
    /// to be sent, a connection under way, or no fd at all, as over PCIe).
    fn interrupt_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// A fabrics queue pair as the control plane holds it: opening (the transport's own
/// handshake), then carrying admin or Connect commands, until the I/O path takes it.
pub trait FabricsQpair: QueuePair<NoIo> + Send + std::fmt::Debug {
    /// Whether the transport's handshake is done (commands may go).
    fn is_ready(&self) -> bool;
    /// The same connection for the I/O path, data in the I/O's own buffers (nothing
    /// may be outstanding).
    fn into_io(self: Box<Self>) -> Result<Box<dyn QueuePair<BdevIo>>, String>;
    /// The transport's own type, for what only it knows (negotiated digests...).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Opens one controller's queue pairs over a fabrics transport: what differs between
/// TCP (a socket and the ICReq handshake, [`crate::tcp::TcpConnector`]) and RDMA (a CM
/// connection, to come). The controller bring-up, reconnection, keep-alive, events and
/// the bdev glue sit above it, the same for both.
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// The transport's name, as SPDK's `trtype` writes it.
    fn trtype(&self) -> &'static str;
    /// The peer's address, for messages.
    fn peer(&self) -> String;
    /// Starts opening queue `qid` with `depth` entries (writes up to `icd_max` bytes in
    /// the capsule), waiting at most `timeout` for the transport's connection; poll it
    /// until [`FabricsQpair::is_ready`].
    fn open(
        &self,
        qid: u16,
        depth: u16,
        icd_max: usize,
        timeout: Duration,
    ) -> Result<Box<dyn FabricsQpair>, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scatter and gather over every split of a 64-byte run into segments agree with
    /// plain slicing, for every offset and length.
    #[test]
    fn scatter_and_gather_match_contiguous_copies() {
        let splits: [&[usize]; 4] = [&[64], &[1, 63], &[16, 16, 32], &[7, 0, 20, 37]];
        for sizes in splits {
            for off in 0..64 {
                for len in 0..=(64 - off) {
                    let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(7) + 1).collect();
                    let mut segs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
                    let mut sc = Scatter::new(off, &data);
                    for s in &mut segs {
                        sc.visit(s);
                    }
                    assert!(sc.finished(), "{sizes:?} {off} {len}");
                    let flat: Vec<u8> = segs.concat();
                    let mut want = vec![0u8; 64];
                    want[off..off + len].copy_from_slice(&data);
                    assert_eq!(flat, want, "{sizes:?} {off} {len}");
                    let mut got = Vec::new();
                    let mut g = Gather::new(off, len);
                    for s in &segs {
                        g.visit(s, &mut |d| got.extend_from_slice(d));
                    }
                    assert!(g.finished());
                    assert_eq!(got, data, "{sizes:?} {off} {len}");
                }
            }
        }
        // Past the end: not finished.
        let mut seg = [0u8; 8];
        let mut sc = Scatter::new(4, &[1; 8]);
        sc.visit(&mut seg);
        assert!(!sc.finished());
        let mut g = Gather::new(4, 8);
        g.visit(&seg, &mut |_| {});
        assert!(!g.finished());
    }
}

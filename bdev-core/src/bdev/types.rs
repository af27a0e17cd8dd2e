//! The vocabulary of I/O: types, statuses, events, payloads and completions.

use std::fmt;

use crate::dma::DmaBuf;

/// The kinds of I/O a bdev may support (SPDK's `spdk_bdev_io_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoType {
    /// Read blocks into the caller's buffers.
    Read,
    /// Write blocks from the caller's buffers.
    Write,
    /// Deallocate blocks (reads afterwards return zeroes on the bdevs that say so).
    Unmap,
    /// Make completed writes durable.
    Flush,
    /// Reset the device: abort what is outstanding.
    Reset,
    /// Write zeroes without a data buffer.
    WriteZeroes,
}

impl IoType {
    /// Every type, in a fixed order.
    pub const ALL: [IoType; 6] = [
        IoType::Read,
        IoType::Write,
        IoType::Unmap,
        IoType::Flush,
        IoType::Reset,
        IoType::WriteZeroes,
    ];

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Whether the type changes data (needs a descriptor opened for writing).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            IoType::Write | IoType::Unmap | IoType::Flush | IoType::WriteZeroes
        )
    }

    /// Whether the type carries a data buffer.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }

    /// The type SPDK names `name` in JSON, if we have it.
    pub fn from_name(name: &str) -> Option<IoType> {
        IoType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The name SPDK uses in JSON (`supported_io_types`).
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Unmap => "unmap",
            IoType::Flush => "flush",
            IoType::Reset => "reset",
            IoType::WriteZeroes => "write_zeroes",
        }
    }
}

impl fmt::Display for IoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the bdev layer refused an I/O before it reached the bdev. The I/O still completes,
/// through its callback, with [`IoStatus::Rejected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The block range overflows or lies past the end of the bdev (SPDK: -EINVAL).
    OutOfRange,
    /// A writing I/O on a descriptor opened read-only (SPDK: -EBADF).
    ReadOnly,
    /// The bdev does not support this I/O type (SPDK: -ENOTSUP).
    Unsupported,
    /// The buffers hold fewer bytes than the blocks asked for (SPDK: -EINVAL).
    BufferTooSmall,
    /// A buffer breaks the bdev's required alignment (SPDK: -EINVAL).
    Misaligned,
    /// The channel belongs to another bdev than the descriptor (SPDK: -EINVAL).
    WrongChannel,
    /// More blocks or segments than the bdev accepts in one I/O (SPDK: -EINVAL).
    TooLarge,
}

impl Reject {
    /// The errno SPDK's submit functions return for the same condition (negative).
    pub fn errno(self) -> i32 {
        match self {
            Reject::ReadOnly => -libc::EBADF,
            Reject::Unsupported => -libc::ENOTSUP,
            _ => -libc::EINVAL,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reject::OutOfRange => "block range outside the bdev",
            Reject::ReadOnly => "descriptor is read-only",
            Reject::Unsupported => "I/O type not supported by the bdev",
            Reject::BufferTooSmall => "buffer smaller than the blocks requested",
            Reject::Misaligned => "buffer breaks the bdev's required alignment",
            Reject::WrongChannel => "channel belongs to another bdev",
            Reject::TooLarge => "I/O exceeds the bdev's size or segment limits",
        })
    }
}

/// How an I/O ended (SPDK's `spdk_bdev_io_status`, plus the layer's own refusals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// Done.
    Success,
    /// Failed in the bdev.
    Failed,
    /// The bdev ran out of resources for this I/O.
    NoMem,
    /// Aborted (by a reset or an abort).
    Aborted,
    /// A compare found different data.
    Miscompare,
    /// An NVMe status (status code type, status code).
    NvmeError {
        /// Status code type.
        sct: u8,
        /// Status code.
        sc: u8,
    },
    /// A Linux AIO / io_uring error (negative errno, -4095 to -1 in Linux; an i16 keeps
    /// the status four bytes, and the I/O's context in its cache lines: see
    /// [`IoStatus::from_errno`]).
    AioError(i16),
    /// Refused by the bdev layer before submission.
    Rejected(Reject),
}

impl IoStatus {
    /// The status of a call that returned `res`, a negative errno (`AioError`; one out of
    /// an `i16`'s range, which no Linux errno is, reads as -EIO).
    pub fn from_errno(res: i64) -> IoStatus {
        IoStatus::AioError(i16::try_from(res).unwrap_or(-libc::EIO as i16))
    }

    /// Whether the I/O succeeded.
    #[inline]
    pub fn is_success(self) -> bool {
        matches!(self, IoStatus::Success)
    }
}

impl fmt::Display for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoStatus::Success => f.write_str("success"),
            IoStatus::Failed => f.write_str("failed"),
            IoStatus::NoMem => f.write_str("out of resources"),
            IoStatus::Aborted => f.write_str("aborted"),
            IoStatus::Miscompare => f.write_str("miscompare"),
            IoStatus::NvmeError { sct, sc } => write!(f, "NVMe error sct {sct:#x} sc {sc:#x}"),
            IoStatus::AioError(e) => {
                write!(
                    f,
                    "AIO error {}",
                    std::io::Error::from_raw_os_error(-i32::from(*e))
                )
            }
            IoStatus::Rejected(r) => write!(f, "rejected: {r}"),
        }
    }
}

/// Events delivered to a descriptor's opener (SPDK's `spdk_bdev_event_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev is being unregistered: close the descriptor.
    Remove,
    /// The bdev's block count changed.
    Resize,
}

/// The data buffers an I/O carries, owned by the I/O while it is in flight and handed
/// back with its completion.
#[derive(Debug, Default)]
pub enum Payload {
    /// No data (flush, unmap, write_zeroes, reset).
    #[default]
    None,
    /// One contiguous buffer.
    Buf(DmaBuf),
    /// Several buffers, used in order (readv/writev).
    Bufs(Vec<DmaBuf>),
}

impl Payload {
    /// Total bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::Buf(b) => b.len(),
            Payload::Bufs(v) => v.iter().map(|b| b.len()).sum(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends segments covering the first `need` bytes.
    #[inline]
    pub(crate) fn push_iovs(&self, iovs: &mut crate::dma::Iovs, need: usize) {
        match self {
            Payload::None => {}
            Payload::Buf(b) => b.push_iovs(iovs, need),
            Payload::Bufs(v) => v.push_iovs(iovs, need),
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::dma::DmaBuf {}
    impl Sealed for Vec<crate::dma::DmaBuf> {}
    impl Sealed for () {}
    impl Sealed for super::Payload {}
}

/// A payload type the typed API accepts and gives back: [`DmaBuf`], `Vec<DmaBuf>`, `()`,
/// or the untyped [`Payload`]. Sealed: the layer relies on these buffers being owned.
pub trait IoPayload: sealed::Sealed + Sized + 'static {
    /// Wraps the value.
    fn into_payload(self) -> Payload;
    /// Unwraps the value this type wrapped. Only ever called with what `into_payload` made.
    fn from_payload(p: Payload) -> Self;
    /// Total bytes.
    fn data_len(&self) -> usize;
    /// Number of buffers.
    fn segments(&self) -> usize;
    /// Whether a buffer starts off the alignment `mask` (alignment - 1).
    fn misaligned(&self, mask: usize) -> bool;
    /// Appends segments covering the first `need` bytes.
    #[doc(hidden)]
    fn push_iovs(&self, iovs: &mut crate::dma::Iovs, need: usize);
}

impl IoPayload for DmaBuf {
    #[inline]
    fn into_payload(self) -> Payload {
        Payload::Buf(self)
    }
    #[inline]
    fn from_payload(p: Payload) -> Self {
        match p {
            Payload::Buf(b) => b,
            // The layer returns exactly what was submitted.
            _ => unreachable!("payload changed kind in flight"),
        }
    }
    #[inline]
    fn data_len(&self) -> usize {
        self.len()
    }
    #[inline]
    fn segments(&self) -> usize {
        1
    }
    #[inline]
    fn misaligned(&self, mask: usize) -> bool {
        self.addr() & mask != 0
    }
    #[inline]
    fn push_iovs(&self, iovs: &mut crate::dma::Iovs, need: usize) {
        if need > 0 {
            iovs.push(self.iov(need));
        }
    }
}

impl IoPayload for Vec<DmaBuf> {
    fn into_payload(self) -> Payload {
        Payload::Bufs(self)
    }
    fn from_payload(p: Payload) -> Self {
        match p {
            Payload::Bufs(v) => v,
            _ => unreachable!("payload changed kind in flight"),
        }
    }
    fn data_len(&self) -> usize {
        self.iter().map(|b| b.len()).sum()
    }
    fn segments(&self) -> usize {
        self.len()
    }
    fn misaligned(&self, mask: usize) -> bool {
        self.iter().any(|b| b.addr() & mask != 0)
    }
    fn push_iovs(&self, iovs: &mut crate::dma::Iovs, mut need: usize) {
        for b in self {
            if need == 0 {
                break;
            }
            let iov = b.iov(need);
            need -= iov.len();
            iovs.push(iov);
        }
    }
}

impl IoPayload for () {
    #[inline]
    fn into_payload(self) -> Payload {
        Payload::None
    }
    #[inline]
    fn from_payload(_: Payload) -> Self {}
    #[inline]
    fn data_len(&self) -> usize {
        0
    }
    #[inline]
    fn segments(&self) -> usize {
        0
    }
    #[inline]
    fn misaligned(&self, _: usize) -> bool {
        false
    }
    #[inline]
    fn push_iovs(&self, _: &mut crate::dma::Iovs, _: usize) {}
}

impl IoPayload for Payload {
    #[inline]
    fn into_payload(self) -> Payload {
        self
    }
    #[inline]
    fn from_payload(p: Payload) -> Self {
        p
    }
    #[inline]
    fn data_len(&self) -> usize {
        self.len()
    }
    #[inline]
    fn segments(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::Buf(_) => 1,
            Payload::Bufs(v) => v.len(),
        }
    }
    #[inline]
    fn misaligned(&self, mask: usize) -> bool {
        match self {
            Payload::None => false,
            Payload::Buf(b) => b.misaligned(mask),
            Payload::Bufs(v) => v.misaligned(mask),
        }
    }
    #[inline]
    fn push_iovs(&self, iovs: &mut crate::dma::Iovs, need: usize) {
        Payload::push_iovs(self, iovs, need)
    }
}

/// What a completion callback receives: the status and the buffers back.
#[derive(Debug)]
pub struct Completion<P> {
    /// How the I/O ended.
    pub status: IoStatus,
    /// The buffers given at submission.
    pub payload: P,
    /// The tick of the thread's clock ([`crate::thread::now`]) at which the I/O was
    /// submitted (SPDK's `spdk_bdev_io_get_submit_tsc`): its latency is
    /// `thread::now() - submit_tick`. A request that waited for an I/O context keeps the
    /// tick of its submission (the layer's wait is part of its latency, as the iostat
    /// counts it too); a request refused has the tick of its refusal.
    pub submit_tick: u64,
}

impl<P> Completion<P> {
    /// Whether the I/O succeeded.
    #[inline]
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// `Ok(payload)` on success, else the status with the payload.
    pub fn into_result(self) -> Result<P, IoError<P>> {
        IoError::result(self.status, self.payload)
    }
}

/// A failed I/O: its status, and its buffers so that nothing is lost.
pub struct IoError<P> {
    /// How the I/O ended.
    pub status: IoStatus,
    /// The buffers given at submission.
    pub payload: P,
}

impl<P> IoError<P> {
    /// `Ok(payload)` on success, else the status with the payload.
    #[inline]
    pub(crate) fn result(status: IoStatus, payload: P) -> Result<P, IoError<P>> {
        if status.is_success() {
            Ok(payload)
        } else {
            Err(IoError { status, payload })
        }
    }
}

impl<P> fmt::Debug for IoError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoError({:?})", self.status)
    }
}

impl<P> fmt::Display for IoError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "I/O {}", self.status)
    }
}

impl<P> std::error::Error for IoError<P> {}

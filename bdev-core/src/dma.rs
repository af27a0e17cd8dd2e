//! Memory that I/O data lives in.
//!
//! Two kinds, both aligned heap allocations (hugepage- and IOMMU-backed allocation will
//! slot in behind the same types when the PCIe transport arrives):
//!
//! - [`DmaBuf`]: a buffer with one owner. The application fills or reads it through
//!   ordinary slices while it owns it, and moves it into an I/O, which hands it back on
//!   completion. While in flight, the bdev (or a device) writes it through raw pointers.
//! - [`BlockMem`]: memory many threads access at once (a RAM disk's blocks). It is never
//!   exposed as a slice; data moves in and out only by bounds-checked copies to and from an
//!   I/O's buffers. Concurrent I/O to the same blocks has unspecified content, as on a
//!   real disk, but is never read through a Rust reference: this is the same rule as for
//!   device-written memory.
//!
//! [`Iov`] is the raw `(base, len)` segment an I/O carries, laid out as `struct iovec` so
//! that engines (AIO, io_uring) can pass an I/O's segment array to the kernel directly.
//! Segments can only be built by this crate, from buffers an I/O owns.

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Default alignment of I/O buffers: a page, enough for O_DIRECT and NVMe PRPs.
pub const DEFAULT_ALIGN: usize = 4096;

fn layout(len: usize, align: usize) -> Result<Layout> {
    if !align.is_power_of_two() {
        return Err(Error::invalid(
            "buffer alignment",
            format!("{align} is not a power of two"),
        ));
    }
    Layout::from_size_align(len.max(1), align).map_err(|_| Error::NoMem { len, align })
}

struct Alloc {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Alloc {
    fn zeroed(len: usize, align: usize) -> Result<Alloc> {
        let layout = layout(len, align)?;
        // SAFETY: the layout has a non-zero size (len.max(1)) and a valid alignment.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or(Error::NoMem { len, align })?;
        Ok(Alloc { ptr, layout })
    }
}

impl Alloc {
    /// Memory that is written at once, so that every page is faulted in now rather than
    /// during I/O, backed by transparent huge pages where the kernel allows (as SPDK's
    /// hugepage memory).
    fn prefaulted(len: usize, align: usize) -> Result<Alloc> {
        const HUGE: usize = 2 << 20;
        // Writing every page of more than the machine has would summon the OOM killer
        // rather than fail: refuse up front, as a hugepage allocation would.
        if let Some(avail) = available_memory() {
            if len as u64 > avail {
                return Err(Error::NoMem { len, align });
            }
        }
        let align = if len >= HUGE { align.max(HUGE) } else { align };
        let layout = layout(len, align)?;
        // SAFETY: the layout has a non-zero size and a valid alignment.
        let p = unsafe { alloc(layout) };
        let ptr = NonNull::new(p).ok_or(Error::NoMem { len, align })?;
        if len >= HUGE {
            // SAFETY: [ptr, ptr+size) is a mapping we own; MADV_HUGEPAGE only changes how it
            // is backed, never its contents or validity. Failure is harmless (ignored).
            let _ = unsafe { libc::madvise(p.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        // SAFETY: the allocation is valid for layout.size() bytes and not yet shared.
        unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        Ok(Alloc { ptr, layout })
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes, where the kernel reports it.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl Drop for Alloc {
    fn drop(&mut self) {
        // SAFETY: ptr was returned by alloc_zeroed with this very layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// An owned, aligned, zero-initialised I/O buffer.
pub struct DmaBuf {
    mem: Alloc,
    /// The buffer's id, with [`EMPTY`] set for a zero-length buffer (whose allocation is
    /// one byte). The length is the allocation's: no field of its own, so that a `DmaBuf`
    /// (and every payload that moves one through an I/O) stays four words.
    id: u64,
}

const EMPTY: u64 = 1 << 63;

/// Ids of buffers: unique in the process, never reused (an engine may key kernel
/// registrations on them).
static NEXT_BUF_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

// SAFETY: DmaBuf owns its allocation exclusively, like Vec<u8>; nothing else refers to it
// while the DmaBuf exists outside an I/O, so moving it between threads is sound.
unsafe impl Send for DmaBuf {}
// SAFETY: shared references only give out &[u8] reads, as Vec<u8> does.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> Result<DmaBuf> {
        let id = NEXT_BUF_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(DmaBuf {
            mem: Alloc::zeroed(len, align)?,
            id: if len == 0 { id | EMPTY } else { id },
        })
    }

    /// Allocates `len` zeroed bytes aligned to a page.
    pub fn page_aligned(len: usize) -> Result<DmaBuf> {
        Self::new(len, DEFAULT_ALIGN)
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        // The allocation's size, masked to 0 for an empty buffer (branch-free: it is on
        // every I/O's path).
        let empty = (self.id >> 63) as usize;
        self.mem.layout.size() & empty.wrapping_sub(1)
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The alignment the buffer was allocated with.
    pub fn align(&self) -> usize {
        self.mem.layout.align()
    }

    /// Start address (for alignment checks and diagnostics).
    pub fn addr(&self) -> usize {
        self.mem.ptr.as_ptr() as usize
    }

    /// The buffer's id: unique in the process, never reused.
    pub fn id(&self) -> u64 {
        self.id & !EMPTY
    }

    pub(crate) fn iov(&self, len: usize) -> Iov {
        Iov {
            base: self.mem.ptr.as_ptr(),
            len: len.min(self.len()),
        }
    }
}

impl Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the allocation holds `len` initialised (zeroed at allocation) bytes owned by
        // self; while outside an I/O nothing else writes them.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr(), self.len()) }
    }
}

impl DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for Deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.mem.ptr.as_ptr(), self.len()) }
    }
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DmaBuf({} bytes @ {:#x}, align {})",
            self.len(),
            self.addr(),
            self.align()
        )
    }
}

/// One segment of an I/O's data, laid out as `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Iov {
    base: *mut u8,
    len: usize,
}

const _: () = assert!(std::mem::size_of::<Iov>() == std::mem::size_of::<libc::iovec>());
const _: () = assert!(std::mem::align_of::<Iov>() == std::mem::align_of::<libc::iovec>());

/// An I/O's segment list: the first segment inline (most I/O has one).
pub(crate) type Iovs = smallvec::SmallVec<[Iov; 1]>;
const _: () = assert!(std::mem::size_of::<Iovs>() == std::mem::size_of::<Vec<Iov>>());

impl Iov {
    /// Start address.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part `[skip, skip + len)` of the segment (clamped to it).
    pub(crate) fn sub(&self, skip: usize, len: usize) -> Iov {
        let skip = skip.min(self.len);
        Iov {
            base: self.base.wrapping_add(skip),
            len: len.min(self.len - skip),
        }
    }

    /// The segment viewed as a `libc::iovec` array, for passing to the kernel.
    pub fn as_iovecs(iovs: &[Iov]) -> *const libc::iovec {
        iovs.as_ptr().cast()
    }
}

/// Appends the segments covering bytes `[skip, skip + need)` of `src`.
pub(crate) fn push_sub_iovs(src: &[Iov], dst: &mut Iovs, mut skip: usize, mut need: usize) {
    for s in src {
        if need == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let v = s.sub(skip, need);
        skip = 0;
        need -= v.len;
        dst.push(v);
    }
}

/// Memory shared by many threads' I/O (a RAM disk). Accessed only through copies.
pub struct BlockMem {
    mem: Alloc,
    len: usize,
}

// SAFETY: BlockMem's bytes are only accessed through raw copies (never references); the
// allocation is owned and freed once. Concurrent copies to the same bytes give unspecified
// bytes, not memory unsafety, under the crate's rule for device-written memory.
unsafe impl Send for BlockMem {}
// SAFETY: as above; &BlockMem exposes no reference into the bytes.
unsafe impl Sync for BlockMem {}

impl fmt::Debug for BlockMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockMem({} bytes)", self.len)
    }
}

impl BlockMem {
    /// Allocates `len` zeroed bytes aligned to `align`, every page faulted in (and backed
    /// by transparent huge pages where possible).
    pub fn new(len: usize, align: usize) -> Result<BlockMem> {
        Ok(BlockMem {
            mem: Alloc::prefaulted(len, align)?,
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize> {
        let off = usize::try_from(offset).map_err(|_| Error::invalid("offset", "beyond memory"))?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(off),
            _ => Err(Error::invalid(
                "memory range",
                format!("{len} bytes at {offset} is outside {} bytes", self.len),
            )),
        }
    }

    /// Sets `len` bytes at `offset` to zero.
    pub fn zero(&self, offset: u64, len: usize) -> Result<()> {
        let off = self.check(offset, len)?;
        // SAFETY: [off, off+len) is inside the allocation (checked); raw write, no reference.
        unsafe { std::ptr::write_bytes(self.mem.ptr.as_ptr().wrapping_add(off), 0, len) };
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` into `dst`.
    pub fn read_into(&self, offset: u64, dst: &mut [u8]) -> Result<()> {
        let off = self.check(offset, dst.len())?;
        // SAFETY: the source range is inside the allocation (checked); `dst` is an exclusive
        // slice of another allocation, so the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.mem.ptr.as_ptr().wrapping_add(off),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    /// Copies `src` into memory at `offset`.
    pub fn write_from(&self, offset: u64, src: &[u8]) -> Result<()> {
        let off = self.check(offset, src.len())?;
        // SAFETY: the destination range is inside the allocation (checked); `src` is a slice
        // of another allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.mem.ptr.as_ptr().wrapping_add(off),
                src.len(),
            )
        };
        Ok(())
    }

    /// Copies the segments' bytes into memory starting at `offset`.
    pub(crate) fn copy_from_iovs(&self, offset: u64, iovs: &[Iov]) -> Result<()> {
        let total: usize = iovs.iter().map(|v| v.len).sum();
        let mut off = self.check(offset, total)?;
        for v in iovs {
            // SAFETY: the destination range is inside the allocation (checked for the total);
            // the source is an I/O segment, valid for `len` bytes while the I/O is in flight
            // (crate invariant of Iov). The two never overlap: BlockMem is never an I/O buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    v.base,
                    self.mem.ptr.as_ptr().wrapping_add(off),
                    v.len,
                )
            };
            off += v.len;
        }
        Ok(())
    }

    /// Copies memory starting at `offset` into the segments.
    pub(crate) fn copy_to_iovs(&self, offset: u64, iovs: &[Iov]) -> Result<()> {
        let total: usize = iovs.iter().map(|v| v.len).sum();
        let mut off = self.check(offset, total)?;
        for v in iovs {
            // SAFETY: as in copy_from_iovs, with source and destination swapped.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.mem.ptr.as_ptr().wrapping_add(off),
                    v.base,
                    v.len,
                )
            };
            off += v.len;
        }
        Ok(())
    }
}

/// Runs `f` over each segment as a shared slice.
///
/// # Safety
/// Every segment must be valid for reads of its length for the duration of the call, and
/// not written by anyone during it.
pub(crate) unsafe fn for_each_segment(iovs: &[Iov], mut f: impl FnMut(&[u8])) {
    for v in iovs {
        // SAFETY: the caller guarantees the segment is valid and unaliased by writers.
        let s = unsafe { std::slice::from_raw_parts(v.base, v.len) };
        f(s);
    }
}

/// Runs `f` over each segment as a mutable slice.
///
/// # Safety
/// Every segment must be valid for writes of its length for the duration of the call, not
/// accessed by anyone else during it, and the segments must not overlap.
pub(crate) unsafe fn for_each_segment_mut(iovs: &[Iov], mut f: impl FnMut(&mut [u8])) {
    for v in iovs {
        // SAFETY: the caller guarantees exclusive access to each non-overlapping segment.
        let s = unsafe { std::slice::from_raw_parts_mut(v.base, v.len) };
        f(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmabuf_is_aligned_and_zeroed() {
        for align in [512, 4096, 1 << 21] {
            let mut b = DmaBuf::new(10_000, align).unwrap();
            assert_eq!(b.addr() % align, 0);
            assert!(b.iter().all(|&x| x == 0));
            b[9_999] = 7;
            assert_eq!(b[9_999], 7);
        }
        assert!(DmaBuf::new(10, 3).is_err());
        assert_eq!(DmaBuf::new(0, 4096).unwrap().len(), 0);
    }

    #[test]
    fn blockmem_copies_are_bounds_checked() {
        let m = BlockMem::new(8192, 4096).unwrap();
        let mut src = DmaBuf::new(4096, 4096).unwrap();
        src.fill(0xab);
        let iov = [src.iov(4096)];
        m.copy_from_iovs(4096, &iov).unwrap();
        assert!(m.copy_from_iovs(4097, &iov).is_err());
        assert!(m.copy_from_iovs(u64::MAX, &iov).is_err());
        let dst = DmaBuf::new(4096, 4096).unwrap();
        m.copy_to_iovs(4096, &[dst.iov(4096)]).unwrap();
        assert!(dst.iter().all(|&x| x == 0xab));
        m.zero(4096, 100).unwrap();
        m.copy_to_iovs(4096, &[dst.iov(4096)]).unwrap();
        assert!(dst[..100].iter().all(|&x| x == 0) && dst[100] == 0xab);
        assert!(m.zero(8000, 200).is_err());
    }

    #[test]
    fn blockmem_larger_than_the_machine_is_refused() {
        assert!(matches!(
            BlockMem::new(1 << 50, 4096),
            Err(Error::NoMem { .. })
        ));
    }
}

/// Per-thread pool of [`DmaBuf`]s in power-of-two size classes (4 KiB to 64 MiB), for a
/// module that needs a buffer of its own per I/O (an encrypted write, a transport's
/// bounce): buffers given back are kept (up to 256 per class and 64 MiB in all) and
/// handed out again, so the steady state allocates nothing. Larger requests get a buffer of their own size,
/// not kept. Not `Sync`: one per channel.
#[derive(Debug)]
pub struct BufPool {
    classes: std::cell::RefCell<Vec<Vec<DmaBuf>>>,
    align: usize,
    /// Bytes of buffers kept.
    kept: std::cell::Cell<usize>,
}

impl BufPool {
    const CLASSES: usize = 15;
    const KEEP: usize = 256;
    /// Most bytes kept in all (a burst of large I/O would otherwise leave gigabytes).
    const KEEP_BYTES: usize = 64 << 20;

    /// A pool of buffers aligned to `align` bytes.
    pub fn new(align: usize) -> BufPool {
        BufPool {
            classes: std::cell::RefCell::new((0..Self::CLASSES).map(|_| Vec::new()).collect()),
            align,
            kept: std::cell::Cell::new(0),
        }
    }

    fn class(len: usize) -> usize {
        (len.max(4096).next_power_of_two().trailing_zeros() - 12) as usize
    }

    /// A buffer of at least `len` bytes.
    pub fn take(&self, len: usize) -> Result<DmaBuf> {
        let c = Self::class(len);
        if c >= Self::CLASSES {
            return DmaBuf::new(len, self.align);
        }
        if let Some(b) = self.classes.borrow_mut()[c].pop() {
            self.kept.set(self.kept.get() - b.len());
            return Ok(b);
        }
        DmaBuf::new(4096 << c, self.align)
    }

    /// Gives a buffer back (kept if it came from the pool's classes).
    pub fn give(&self, b: DmaBuf) {
        let len = b.len();
        if !len.is_power_of_two() || len < 4096 {
            return;
        }
        let c = Self::class(len);
        let mut classes = self.classes.borrow_mut();
        if c < Self::CLASSES
            && classes[c].len() < Self::KEEP
            && self.kept.get() + len <= Self::KEEP_BYTES
        {
            self.kept.set(self.kept.get() + len);
            classes[c].push(b);
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn a_pool_keeps_at_most_its_byte_budget() {
        let p = BufPool::new(4096);
        let big: Vec<DmaBuf> = (0..8).map(|_| p.take(16 << 20).unwrap()).collect();
        let addrs: Vec<usize> = big.iter().map(|b| b.addr()).collect();
        for b in big {
            p.give(b);
        }
        assert_eq!(p.kept.get(), BufPool::KEEP_BYTES, "four of eight kept");
        // Those kept come back; then new ones.
        let again: Vec<DmaBuf> = (0..8).map(|_| p.take(16 << 20).unwrap()).collect();
        let reused = again.iter().filter(|b| addrs.contains(&b.addr())).count();
        assert!(reused >= 4, "{reused}");
        assert_eq!(p.kept.get(), 0);
        // Small ones are kept as before.
        p.give(p.take(4096).unwrap());
        assert_eq!(p.kept.get(), 4096);
    }
}

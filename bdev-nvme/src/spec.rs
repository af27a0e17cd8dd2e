//! NVMe wire structures (NVM Express Base Specification 2.0, NVMe over Fabrics 1.1):
//! submission and completion queue entries, SGL descriptors, identify data, log pages,
//! features, status codes, and the Fabrics commands (Connect, Property Get/Set).
//!
//! Every structure is `#[repr(C)]` with explicit little-endian fields (zerocopy's
//! byte-order types, alignment 1, so no padding creeps in), checked for size at compile
//! time, and read from or written to bytes without unsafe code (`FromBytes`,
//! `IntoBytes`). Fields are named as in the specification; offsets are in the comments
//! and checked by the tests below.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

macro_rules! size_check {
    ($t:ty, $n:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $n);
    };
}

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O submission queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O submission queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get log page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O completion queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O completion queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous event request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Keep alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics commands (the type is in `fctype`).
    pub const FABRICS: u8 = 0x7f;
}

/// NVM command set opcodes.
pub mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset management (deallocate: unmap).
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Fabrics command types (`fctype`).
pub mod fabrics {
    /// Property set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property get.
    pub const PROPERTY_GET: u8 = 0x04;
}

/// Controller properties (register offsets), read and written with Property Get/Set on
/// fabrics, by MMIO on PCIe.
pub mod prop {
    /// Controller capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Controller configuration.
    pub const CC: u32 = 0x14;
    /// Controller status.
    pub const CSTS: u32 = 0x1c;
}

/// Identify CNS values.
pub mod cns {
    /// Identify namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// I/O command set specific Identify Controller (with CSI 0 in CDW11: the NVM
    /// command set's, whose byte 1 is WZSL, the Write Zeroes Size Limit).
    pub const CS_CONTROLLER: u8 = 0x06;
}

/// Log page identifiers.
pub mod lid {
    /// Error information.
    pub const ERROR: u8 = 0x01;
    /// SMART / health information.
    pub const SMART: u8 = 0x02;
    /// Changed namespace list.
    pub const CHANGED_NS_LIST: u8 = 0x04;
    /// Discovery (fabrics).
    pub const DISCOVERY: u8 = 0x70;
}

/// Feature identifiers.
pub mod fid {
    /// Number of queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Asynchronous event configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Keep alive timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// A submission queue entry (64 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Sqe {
    /// 0: opcode.
    pub opc: u8,
    /// 1: fused operation (bits 1:0), PRP or SGL (bits 7:6).
    pub flags: u8,
    /// 2: command identifier.
    pub cid: U16,
    /// 4: namespace.
    pub nsid: U32,
    /// 8, 12: command dwords 2 and 3 (for a Fabrics command, `fctype` is byte 4 instead:
    /// see [`Sqe::fctype`]).
    pub cdw2: U32,
    /// 12.
    pub cdw3: U32,
    /// 16: metadata pointer.
    pub mptr: U64,
    /// 24: data pointer (PRP1/PRP2 or SGL descriptor 1).
    pub dptr: [u8; 16],
    /// 40..64: command dwords 10 to 15.
    pub cdw10: U32,
    /// 44.
    pub cdw11: U32,
    /// 48.
    pub cdw12: U32,
    /// 52.
    pub cdw13: U32,
    /// 56.
    pub cdw14: U32,
    /// 60.
    pub cdw15: U32,
}
size_check!(Sqe, 64);

/// `Sqe::flags`: the data pointer is an SGL (metadata as a contiguous buffer).
pub const PSDT_SGL: u8 = 1 << 6;

impl Sqe {
    /// A command of `opc` with `cid` on `nsid`.
    pub fn new(opc: u8, cid: u16, nsid: u32) -> Sqe {
        Sqe {
            opc,
            cid: cid.into(),
            nsid: nsid.into(),
            ..Default::default()
        }
    }

    /// A Fabrics command: the type sits at byte 4, where `nsid` is in other commands.
    pub fn fabrics(fctype: u8, cid: u16) -> Sqe {
        let mut s = Sqe::new(admin::FABRICS, cid, 0);
        s.nsid = U32::new(fctype as u32);
        s
    }

    /// The Fabrics command type (byte 4).
    pub fn fctype(&self) -> u8 {
        self.nsid.get() as u8
    }

    /// Sets SGL descriptor 1.
    pub fn set_sgl(&mut self, d: SglDescriptor) {
        self.flags = (self.flags & !0xc0) | PSDT_SGL;
        self.dptr.copy_from_slice(d.as_bytes());
    }

    /// SGL descriptor 1.
    pub fn sgl(&self) -> SglDescriptor {
        SglDescriptor::read_from_bytes(&self.dptr).unwrap_or_default()
    }
}

/// A completion queue entry (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Cqe {
    /// 0: command specific (result).
    pub dw0: U32,
    /// 4: command specific.
    pub dw1: U32,
    /// 8: submission queue head.
    pub sqhd: U16,
    /// 10: submission queue identifier.
    pub sqid: U16,
    /// 12: command identifier.
    pub cid: U16,
    /// 14: phase (bit 0) and status (bits 15:1).
    pub status: U16,
}
size_check!(Cqe, 16);

impl Cqe {
    /// The status without the phase bit.
    pub fn status(&self) -> Status {
        Status(self.status.get() >> 1)
    }
}

/// A completion status (the status field without the phase bit): SC bits 7:0, SCT bits
/// 10:8, CRD bits 12:11, More bit 13, DNR bit 14.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status(pub u16);

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Generic status codes (SCT 0) this driver acts on.
pub mod sc {
    /// Successful completion.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid command opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid field in command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Data transfer error.
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    /// Internal error.
    pub const INTERNAL_ERROR: u8 = 0x06;
    /// Command abort requested.
    pub const ABORTED_BY_REQUEST: u8 = 0x07;
    /// Command aborted due to SQ deletion.
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    /// Invalid namespace or format.
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    /// Command sequence error (e.g. a discovery Get Log Page before CC.EN).
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    /// LBA out of range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    /// Namespace not ready.
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
    /// Command specific 0x83: what Linux's nvmet answers a command its namespace backend
    /// can't do (Write Zeroes on a file that can't zero a range: `NVME_SC_ONCS_NOT_SUPPORTED`
    /// there; NVMe 2.0 names the code Command Size Limit Exceeded).
    pub const CS_NOT_SUPPORTED: u8 = 0x83;
}

impl Status {
    /// Status code.
    pub fn sc(self) -> u8 {
        self.0 as u8
    }
    /// Status code type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    /// Command retry delay index.
    pub fn crd(self) -> u8 {
        ((self.0 >> 11) & 3) as u8
    }
    /// Do not retry.
    pub fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Success.
    pub fn is_success(self) -> bool {
        self.sc() == sc::SUCCESS && self.sct() == sct::GENERIC
    }
    /// A status of `sct`/`sc`.
    pub fn new(sct: u8, sc: u8) -> Status {
        Status(((sct as u16 & 7) << 8) | sc as u16)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sct {:#x} sc {:#x}{}",
            self.sct(),
            self.sc(),
            if self.dnr() { " (dnr)" } else { "" }
        )
    }
}

/// An SGL descriptor (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SglDescriptor {
    /// 0: address (or offset, for in-capsule data).
    pub addr: U64,
    /// 8: length.
    pub len: U32,
    /// 12: reserved.
    pub rsvd: [u8; 3],
    /// 15: type (bits 7:4) and subtype (bits 3:0).
    pub id: u8,
}
size_check!(SglDescriptor, 16);

/// `SglDescriptor::id` values used on fabrics.
pub mod sgl {
    /// Data block, offset into the capsule's in-capsule data (NVMe/TCP in-capsule writes).
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL data block, transport specific (NVMe/TCP data carried by
    /// C2HData / R2T-driven H2CData PDUs).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5a;
    /// Keyed data block (RDMA): type 4, subtype 0 (address) or 0xf (invalidate).
    pub const KEYED_DATA_BLOCK: u8 = 0x40;
}

impl SglDescriptor {
    /// A descriptor of `len` bytes with `id`, at `addr`.
    pub fn new(id: u8, addr: u64, len: u32) -> SglDescriptor {
        SglDescriptor {
            addr: addr.into(),
            len: len.into(),
            rsvd: [0; 3],
            id,
        }
    }
}

/// Fabrics Connect command data (1024 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ConnectData {
    /// 0: host identifier.
    pub hostid: [u8; 16],
    /// 16: controller ID (0xffff: any, for the admin queue of a dynamic controller).
    pub cntlid: U16,
    /// 18: reserved.
    pub rsvd1: [u8; 238],
    /// 256: subsystem NQN, NUL-padded.
    pub subnqn: [u8; 256],
    /// 512: host NQN, NUL-padded.
    pub hostnqn: [u8; 256],
    /// 768: reserved.
    pub rsvd2: [u8; 256],
}
size_check!(ConnectData, 1024);

/// Copies `s` into a NUL-padded field (truncated to leave a NUL).
pub fn put_str(field: &mut [u8], s: &str) {
    field.fill(0);
    let n = s.len().min(field.len().saturating_sub(1));
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A NUL- or space-padded ASCII field as a string (trailing spaces and NULs trimmed).
pub fn get_str(field: &[u8]) -> String {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end])
        .trim_end()
        .to_string()
}

impl ConnectData {
    /// Connect data for `subnqn` from `hostnqn` / `hostid`, to controller `cntlid`.
    pub fn new(hostid: [u8; 16], cntlid: u16, subnqn: &str, hostnqn: &str) -> ConnectData {
        let mut d = ConnectData::new_zeroed();
        d.hostid = hostid;
        d.cntlid = cntlid.into();
        put_str(&mut d.subnqn, subnqn);
        put_str(&mut d.hostnqn, hostnqn);
        d
    }
}

/// Builds a Connect command for queue `qid` of `sqsize` entries (0-based) with keep-alive
/// timeout `kato_ms`; its data ([`ConnectData`]) goes in the capsule.
pub fn connect_cmd(cid: u16, qid: u16, sqsize: u16, kato_ms: u32) -> Sqe {
    let mut s = Sqe::fabrics(fabrics::CONNECT, cid);
    // recfmt 0 (cdw10 15:0), qid (cdw10 31:16), sqsize (cdw11 15:0), cattr (cdw11 23:16).
    s.cdw10 = U32::new((qid as u32) << 16);
    s.cdw11 = U32::new(sqsize as u32);
    s.cdw12 = U32::new(kato_ms);
    s
}

/// Builds a Property Get of `ofst`, 8 bytes wide when `wide` (CAP), else 4.
pub fn property_get(cid: u16, ofst: u32, wide: bool) -> Sqe {
    let mut s = Sqe::fabrics(fabrics::PROPERTY_GET, cid);
    s.cdw10 = U32::new(wide as u32);
    s.cdw11 = U32::new(ofst);
    s
}

/// Builds a Property Set of `ofst` to `value` (4 bytes wide).
pub fn property_set(cid: u16, ofst: u32, value: u32) -> Sqe {
    let mut s = Sqe::fabrics(fabrics::PROPERTY_SET, cid);
    s.cdw10 = U32::new(0);
    s.cdw11 = U32::new(ofst);
    s.cdw12 = U32::new(value);
    s
}

/// Builds an Identify of `cns` for `nsid`.
pub fn identify(cid: u16, cns: u8, nsid: u32) -> Sqe {
    let mut s = Sqe::new(admin::IDENTIFY, cid, nsid);
    s.cdw10 = U32::new(cns as u32);
    s
}

/// Builds a Get Log Page of `lid`, `len` bytes (a multiple of 4) from byte `offset`.
pub fn get_log_page(cid: u16, lid: u8, nsid: u32, len: u32, offset: u64) -> Sqe {
    let mut s = Sqe::new(admin::GET_LOG_PAGE, cid, nsid);
    let numd = len / 4 - 1;
    s.cdw10 = U32::new(lid as u32 | (numd & 0xffff) << 16);
    s.cdw11 = U32::new(numd >> 16);
    s.cdw12 = U32::new(offset as u32);
    s.cdw13 = U32::new((offset >> 32) as u32);
    s
}

/// Builds a Set Features of `fid` with `cdw11`.
pub fn set_features(cid: u16, fid: u8, cdw11: u32) -> Sqe {
    let mut s = Sqe::new(admin::SET_FEATURES, cid, 0);
    s.cdw10 = U32::new(fid as u32);
    s.cdw11 = U32::new(cdw11);
    s
}

/// Builds a read or write of `nlb` blocks at `slba` (the data pointer is the transport's).
pub fn rw(cid: u16, opc: u8, nsid: u32, slba: u64, nlb: u32) -> Sqe {
    let mut s = Sqe::new(opc, cid, nsid);
    s.cdw10 = U32::new(slba as u32);
    s.cdw11 = U32::new((slba >> 32) as u32);
    s.cdw12 = U32::new(nlb.saturating_sub(1) & 0xffff);
    s
}

/// Identify Controller data (4096 bytes); the fields this driver reads are named, the
/// rest is kept as the bytes it is.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IdentifyController {
    /// 0: PCI vendor ID.
    pub vid: U16,
    /// 2: PCI subsystem vendor ID.
    pub ssvid: U16,
    /// 4: serial number (ASCII, space padded).
    pub sn: [u8; 20],
    /// 24: model number.
    pub mn: [u8; 40],
    /// 64: firmware revision.
    pub fr: [u8; 8],
    /// 72: recommended arbitration burst.
    pub rab: u8,
    /// 73: IEEE OUI.
    pub ieee: [u8; 3],
    /// 76: multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
    /// 77: maximum data transfer size (a power of two of CAP.MPSMIN pages; 0: none).
    pub mdts: u8,
    /// 78: controller ID.
    pub cntlid: U16,
    /// 80: version.
    pub ver: U32,
    /// 84: RTD3 resume latency.
    pub rtd3r: U32,
    /// 88: RTD3 entry latency.
    pub rtd3e: U32,
    /// 92: optional asynchronous events supported.
    pub oaes: U32,
    /// 96: controller attributes.
    pub ctratt: U32,
    /// 100: reserved and fields not used here.
    pub rsvd100: [u8; 156],
    /// 256: optional admin command support.
    pub oacs: U16,
    /// 258: abort command limit (0-based).
    pub acl: u8,
    /// 259: asynchronous event request limit (0-based).
    pub aerl: u8,
    /// 260: firmware updates.
    pub frmw: u8,
    /// 261: log page attributes.
    pub lpa: u8,
    /// 262: error log page entries (0-based).
    pub elpe: u8,
    /// 263: number of power states support.
    pub npss: u8,
    /// 264: fields not used here.
    pub rsvd264: [u8; 56],
    /// 320: keep alive support: granularity in units of 100 ms (0: not supported).
    pub kas: U16,
    /// 322: fields not used here.
    pub rsvd322: [u8; 190],
    /// 512: submission queue entry size (required 3:0, maximum 7:4, log2).
    pub sqes: u8,
    /// 513: completion queue entry size.
    pub cqes: u8,
    /// 514: maximum outstanding commands.
    pub maxcmd: U16,
    /// 516: number of namespaces (the highest NSID).
    pub nn: U32,
    /// 520: optional NVM command support.
    pub oncs: U16,
    /// 522: fused operation support.
    pub fuses: U16,
    /// 524: format NVM attributes.
    pub fna: u8,
    /// 525: volatile write cache.
    pub vwc: u8,
    /// 526: atomic write unit normal.
    pub awun: U16,
    /// 528: atomic write unit power fail.
    pub awupf: U16,
    /// 530: fields not used here.
    pub rsvd530: [u8; 6],
    /// 536: SGL support.
    pub sgls: U32,
    /// 540: maximum number of allowed namespaces.
    pub mnan: U32,
    /// 544: fields not used here.
    pub rsvd544: [u8; 224],
    /// 768: NVM subsystem NQN.
    pub subnqn: [u8; 256],
    /// 1024: fields not used here.
    pub rsvd1024: [u8; 768],
    /// 1792: I/O queue command capsule supported size, in 16-byte units (fabrics).
    pub ioccsz: U32,
    /// 1796: I/O queue response capsule supported size, in 16-byte units.
    pub iorcsz: U32,
    /// 1800: in-capsule data offset, in 16-byte units.
    pub icdoff: U16,
    /// 1802: fabrics controller attributes.
    pub fcatt: u8,
    /// 1803: maximum SGL data block descriptors.
    pub msdbd: u8,
    /// 1804: optional fabric commands support.
    pub ofcs: U16,
    /// 1806: reserved, power state descriptors, vendor specific.
    pub rsvd1806: [u8; 2290],
}
size_check!(IdentifyController, 4096);

/// `IdentifyController::oncs` bits.
pub mod oncs {
    /// Write zeroes supported.
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// Dataset management supported.
    pub const DSM: u16 = 1 << 2;
}

/// An LBA format (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct LbaFormat {
    /// 0: metadata size.
    pub ms: U16,
    /// 2: LBA data size, log2.
    pub lbads: u8,
    /// 3: relative performance (bits 1:0).
    pub rp: u8,
}
size_check!(LbaFormat, 4);

/// Identify Namespace data (4096 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IdentifyNamespace {
    /// 0: namespace size (blocks).
    pub nsze: U64,
    /// 8: namespace capacity.
    pub ncap: U64,
    /// 16: namespace utilisation.
    pub nuse: U64,
    /// 24: namespace features.
    pub nsfeat: u8,
    /// 25: number of LBA formats (0-based).
    pub nlbaf: u8,
    /// 26: formatted LBA size: the format index (bits 3:0, and 6:5 above 16).
    pub flbas: u8,
    /// 27: metadata capabilities.
    pub mc: u8,
    /// 28: end-to-end data protection capabilities.
    pub dpc: u8,
    /// 29: end-to-end data protection type settings.
    pub dps: u8,
    /// 30: fields not used here.
    pub rsvd30: [u8; 16],
    /// 46: namespace optimal I/O boundary (blocks).
    pub noiob: U16,
    /// 48: fields not used here.
    pub rsvd48: [u8; 56],
    /// 104: namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// 120: IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// 128: LBA formats 0 to 63.
    pub lbaf: [LbaFormat; 64],
    /// 384: reserved and vendor specific.
    pub rsvd384: [u8; 3712],
}
size_check!(IdentifyNamespace, 4096);

impl IdentifyNamespace {
    /// The LBA format in use.
    pub fn format(&self) -> LbaFormat {
        let idx = (self.flbas & 0xf) as usize | (((self.flbas >> 5) & 3) as usize) << 4;
        self.lbaf.get(idx).copied().unwrap_or_default()
    }

    /// The block size in bytes, if sane (512 bytes to 64 KiB).
    pub fn block_size(&self) -> Option<u32> {
        let l = self.format().lbads;
        (9..=16).contains(&l).then(|| 1u32 << l)
    }
}

/// Error information log entry (64 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ErrorLogEntry {
    /// 0: error count.
    pub error_count: U64,
    /// 8: submission queue ID.
    pub sqid: U16,
    /// 10: command ID.
    pub cid: U16,
    /// 12: status (with phase bit).
    pub status: U16,
    /// 14: parameter error location.
    pub pel: U16,
    /// 16: LBA.
    pub lba: U64,
    /// 24: namespace.
    pub nsid: U32,
    /// 28: vendor specific information available.
    pub vs: u8,
    /// 29: transport type.
    pub trtype: u8,
    /// 30: reserved and fields not used here.
    pub rsvd30: [u8; 34],
}
size_check!(ErrorLogEntry, 64);

/// SMART / health information log page (512 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SmartLog {
    /// 0: critical warning.
    pub critical_warning: u8,
    /// 1: composite temperature (kelvin).
    pub temperature: U16,
    /// 3: available spare (percent).
    pub avail_spare: u8,
    /// 4: available spare threshold.
    pub spare_thresh: u8,
    /// 5: percentage used.
    pub percent_used: u8,
    /// 6: endurance group critical warning summary.
    pub endu_grp_crit_warn: u8,
    /// 7: reserved.
    pub rsvd7: [u8; 25],
    /// 32: data units read (thousands of 512-byte units, 128-bit).
    pub data_units_read: [u8; 16],
    /// 48: data units written.
    pub data_units_written: [u8; 16],
    /// 64: host read commands.
    pub host_reads: [u8; 16],
    /// 80: host write commands.
    pub host_writes: [u8; 16],
    /// 96: controller busy time (minutes).
    pub ctrl_busy_time: [u8; 16],
    /// 112: power cycles.
    pub power_cycles: [u8; 16],
    /// 128: power on hours.
    pub power_on_hours: [u8; 16],
    /// 144: unsafe shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// 160: media and data integrity errors.
    pub media_errors: [u8; 16],
    /// 176: number of error information log entries.
    pub num_err_log_entries: [u8; 16],
    /// 192: warning composite temperature time (minutes).
    pub warning_temp_time: U32,
    /// 196: critical composite temperature time.
    pub critical_comp_time: U32,
    /// 200: temperature sensors 1 to 8.
    pub temp_sensor: [U16; 8],
    /// 216: fields not used here.
    pub rsvd216: [u8; 296],
}
size_check!(SmartLog, 512);

/// Discovery log page header (1024 bytes); the entries follow.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DiscoveryLogHeader {
    /// 0: generation counter.
    pub genctr: U64,
    /// 8: number of records.
    pub numrec: U64,
    /// 16: record format.
    pub recfmt: U16,
    /// 18: reserved.
    pub rsvd: [u8; 1006],
}
size_check!(DiscoveryLogHeader, 1024);

/// A discovery log page entry (1024 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DiscoveryLogEntry {
    /// 0: transport type (1 RDMA, 2 FC, 3 TCP, 254 intra-host).
    pub trtype: u8,
    /// 1: address family (1 IPv4, 2 IPv6).
    pub adrfam: u8,
    /// 2: subsystem type (1 referral/discovery, 2 NVM, 3 current discovery).
    pub subtype: u8,
    /// 3: transport requirements.
    pub treq: u8,
    /// 4: port ID.
    pub portid: U16,
    /// 6: controller ID.
    pub cntlid: U16,
    /// 8: admin max SQ size.
    pub asqsz: U16,
    /// 10: reserved.
    pub rsvd10: [u8; 22],
    /// 32: transport service identifier (the TCP port, ASCII).
    pub trsvcid: [u8; 32],
    /// 64: reserved.
    pub rsvd64: [u8; 192],
    /// 256: subsystem NQN.
    pub subnqn: [u8; 256],
    /// 512: transport address (ASCII).
    pub traddr: [u8; 256],
    /// 768: transport specific address subtype.
    pub tsas: [u8; 256],
}
size_check!(DiscoveryLogEntry, 1024);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn offsets_are_the_specifications() {
        // Submission and completion entries (Base 2.0, figures 88, 89, 90).
        assert_eq!(offset_of!(Sqe, cid), 2);
        assert_eq!(offset_of!(Sqe, nsid), 4);
        assert_eq!(offset_of!(Sqe, mptr), 16);
        assert_eq!(offset_of!(Sqe, dptr), 24);
        assert_eq!(offset_of!(Sqe, cdw10), 40);
        assert_eq!(offset_of!(Sqe, cdw15), 60);
        assert_eq!(offset_of!(Cqe, sqhd), 8);
        assert_eq!(offset_of!(Cqe, cid), 12);
        assert_eq!(offset_of!(Cqe, status), 14);
        // Identify controller (figure 275).
        assert_eq!(offset_of!(IdentifyController, sn), 4);
        assert_eq!(offset_of!(IdentifyController, mn), 24);
        assert_eq!(offset_of!(IdentifyController, mdts), 77);
        assert_eq!(offset_of!(IdentifyController, cntlid), 78);
        assert_eq!(offset_of!(IdentifyController, ver), 80);
        assert_eq!(offset_of!(IdentifyController, oacs), 256);
        assert_eq!(offset_of!(IdentifyController, aerl), 259);
        assert_eq!(offset_of!(IdentifyController, kas), 320);
        assert_eq!(offset_of!(IdentifyController, sqes), 512);
        assert_eq!(offset_of!(IdentifyController, nn), 516);
        assert_eq!(offset_of!(IdentifyController, oncs), 520);
        assert_eq!(offset_of!(IdentifyController, vwc), 525);
        assert_eq!(offset_of!(IdentifyController, sgls), 536);
        assert_eq!(offset_of!(IdentifyController, subnqn), 768);
        assert_eq!(offset_of!(IdentifyController, ioccsz), 1792);
        assert_eq!(offset_of!(IdentifyController, iorcsz), 1796);
        assert_eq!(offset_of!(IdentifyController, icdoff), 1800);
        assert_eq!(offset_of!(IdentifyController, msdbd), 1803);
        // Identify namespace (figure 280 of the NVM command set spec).
        assert_eq!(offset_of!(IdentifyNamespace, nlbaf), 25);
        assert_eq!(offset_of!(IdentifyNamespace, flbas), 26);
        assert_eq!(offset_of!(IdentifyNamespace, noiob), 46);
        assert_eq!(offset_of!(IdentifyNamespace, nguid), 104);
        assert_eq!(offset_of!(IdentifyNamespace, eui64), 120);
        assert_eq!(offset_of!(IdentifyNamespace, lbaf), 128);
        // Log pages.
        assert_eq!(offset_of!(ErrorLogEntry, lba), 16);
        assert_eq!(offset_of!(ErrorLogEntry, nsid), 24);
        assert_eq!(offset_of!(SmartLog, temperature), 1);
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, media_errors), 160);
        assert_eq!(offset_of!(SmartLog, temp_sensor), 200);
        assert_eq!(offset_of!(DiscoveryLogEntry, trsvcid), 32);
        assert_eq!(offset_of!(DiscoveryLogEntry, subnqn), 256);
        assert_eq!(offset_of!(DiscoveryLogEntry, traddr), 512);
        // Fabrics connect data (NVMe-oF 1.1, figure 20).
        assert_eq!(offset_of!(ConnectData, cntlid), 16);
        assert_eq!(offset_of!(ConnectData, subnqn), 256);
        assert_eq!(offset_of!(ConnectData, hostnqn), 512);
    }

    #[test]
    fn commands_encode_as_the_specification_lays_them_out() {
        // A read of 8 blocks at LBA 0x1_0000_0002 on namespace 1, command 7.
        let s = rw(7, nvm::READ, 1, 0x1_0000_0002, 8);
        let b = s.as_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(&b[2..4], &[7, 0]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[40..44], &[2, 0, 0, 0]);
        assert_eq!(&b[44..48], &[1, 0, 0, 0]);
        assert_eq!(&b[48..52], &[7, 0, 0, 0], "NLB is 0-based");
        // Connect: opcode 0x7f, fctype 1 at byte 4, QID in bits 31:16 of dword 10.
        let c = connect_cmd(1, 3, 127, 0);
        let b = c.as_bytes();
        assert_eq!((b[0], b[4]), (0x7f, 0x01));
        assert_eq!(&b[40..44], &[0, 0, 3, 0]);
        assert_eq!(&b[44..46], &[127, 0]);
        // Property get of CAP, 8 bytes wide.
        let p = property_get(2, prop::CAP, true);
        assert_eq!((p.as_bytes()[4], p.as_bytes()[40]), (0x04, 1));
        // Get log page: 4096 bytes of the discovery log = NUMDL 1023.
        let g = get_log_page(3, lid::DISCOVERY, 0, 4096, 0);
        assert_eq!(g.cdw10.get(), 0x70 | 1023 << 16);
        // SGL descriptor for in-capsule data, and its place in the command.
        let mut s = Sqe::new(nvm::WRITE, 1, 1);
        s.set_sgl(SglDescriptor::new(sgl::DATA_BLOCK_OFFSET, 0, 4096));
        assert_eq!(s.flags & 0xc0, 0x40);
        assert_eq!(s.as_bytes()[24 + 15], 0x01);
        assert_eq!(&s.as_bytes()[32..36], &[0, 0x10, 0, 0]);
        assert_eq!(s.sgl().len.get(), 4096);
    }

    #[test]
    fn status_and_identify_fields_decode() {
        let mut c = Cqe::new_zeroed();
        // Phase 1, SCT 2, SC 0x81, DNR.
        c.status = U16::new(1 | (0x81 << 1) | (2 << 9) | (1 << 15));
        let s = c.status();
        assert_eq!((s.sct(), s.sc(), s.dnr()), (2, 0x81, true));
        assert!(!s.is_success());
        assert!(Cqe::new_zeroed().status().is_success());
        let mut ns = [0u8; 4096];
        ns[0..8].copy_from_slice(&1000u64.to_le_bytes());
        ns[26] = 1; // format 1
        ns[128 + 4 + 2] = 12; // lbaf[1].lbads = 4 KiB
        let id = IdentifyNamespace::read_from_bytes(&ns[..]).unwrap();
        assert_eq!(id.nsze.get(), 1000);
        assert_eq!(id.block_size(), Some(4096));
        ns[128 + 4 + 2] = 40;
        let id = IdentifyNamespace::read_from_bytes(&ns[..]).unwrap();
        assert_eq!(
            id.block_size(),
            None,
            "a bogus format is refused, not shifted"
        );
        let mut ctrl = [0u8; 4096];
        ctrl[24..24 + 14].copy_from_slice(b"Linux         ");
        let id = IdentifyController::read_from_bytes(&ctrl[..]).unwrap();
        assert_eq!(get_str(&id.mn), "Linux");
    }
}

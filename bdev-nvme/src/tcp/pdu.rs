//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0): the wire layouts, encoders for
//! what a host sends (ICReq, CapsuleCmd, H2CData, H2CTermReq) and a parser for what it
//! receives (ICResp, CapsuleResp, C2HData, R2T, C2HTermReq).
//!
//! The parser takes bytes from the network and must never panic on them: every length,
//! offset and digest is checked before use, and anything off ends in a [`PduError`]
//! (the connection is then torn down and re-established, never trusted further). It is
//! the target of the crate's fuzzing (`fuzz/`) and of a randomized test here.
//!
//! A PDU: an 8-byte common header (type, flags, header length, data offset, total
//! length), the type's own header fields, a header digest (CRC32C of the header, when
//! negotiated), padding up to the data offset, data, a data digest (CRC32C of the data,
//! when negotiated).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::spec::{Cqe, Sqe};

/// PDU types.
pub mod pdu_type {
    /// Initialize connection request (host to controller).
    pub const IC_REQ: u8 = 0x00;
    /// Initialize connection response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to controller terminate connection request.
    pub const H2C_TERM_REQ: u8 = 0x02;
    /// Controller to host terminate connection request.
    pub const C2H_TERM_REQ: u8 = 0x03;
    /// Command capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// Response capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to controller data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to host data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to transfer.
    pub const R2T: u8 = 0x09;
}

/// Common header flags.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// The last data PDU of a command's transfer.
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData: the command succeeded, no response capsule follows.
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// Fatal error status of a termination request (`fes`).
pub mod fes {
    /// Invalid PDU header field.
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU sequence error.
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    /// Header digest error.
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    /// Data transfer out of range.
    pub const DATA_TRANSFER_OUT_OF_RANGE: u16 = 0x04;
    /// Data transfer limit exceeded.
    pub const DATA_TRANSFER_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported parameter.
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

macro_rules! size_check {
    ($t:ty, $n:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $n);
    };
}

/// The common header (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct CommonHeader {
    /// 0: PDU type.
    pub pdu_type: u8,
    /// 1: flags.
    pub flags: u8,
    /// 2: header length (common header included, digest excluded).
    pub hlen: u8,
    /// 3: data offset from the start of the PDU (0: no data).
    pub pdo: u8,
    /// 4: total PDU length.
    pub plen: U32,
}
size_check!(CommonHeader, 8);

/// ICReq (128 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IcReq {
    /// 0: common header.
    pub ch: CommonHeader,
    /// 8: PDU format version (0).
    pub pfv: U16,
    /// 10: host PDU data alignment (in dwords, 0-based).
    pub hpda: u8,
    /// 11: digests requested: bit 0 header, bit 1 data.
    pub dgst: u8,
    /// 12: maximum R2Ts outstanding per command (0-based).
    pub maxr2t: U32,
    /// 16: reserved.
    pub rsvd: [u8; 112],
}
size_check!(IcReq, 128);

/// ICResp (128 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IcResp {
    /// 0: common header.
    pub ch: CommonHeader,
    /// 8: PDU format version.
    pub pfv: U16,
    /// 10: controller PDU data alignment (in dwords, 0-based).
    pub cpda: u8,
    /// 11: digests enabled: bit 0 header, bit 1 data.
    pub dgst: u8,
    /// 12: maximum H2CData payload the controller accepts.
    pub maxh2cdata: U32,
    /// 16: reserved.
    pub rsvd: [u8; 112],
}
size_check!(IcResp, 128);

/// CapsuleCmd header (72 bytes): the common header and the command.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CapsuleCmd {
    /// 0: common header.
    pub ch: CommonHeader,
    /// 8: the submission queue entry.
    pub sqe: Sqe,
}
size_check!(CapsuleCmd, 72);

/// CapsuleResp header (24 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CapsuleResp {
    /// 0: common header.
    pub ch: CommonHeader,
    /// 8: the completion queue entry.
    pub cqe: Cqe,
}
size_check!(CapsuleResp, 24);

/// H2CData and C2HData header (24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DataHeader {
    /// 0: common header.
    pub ch: CommonHeader,
    /// 8: command capsule CID.
    pub cccid: U16,
    /// 10: transfer tag (from the R2T; reserved in C2HData).
    pub ttag: U16,
    /// 12: offset of this data in the command's data.
    pub datao: U32,
    /// 16: data length.
    pub datal: U32,
    /// 20: reserved.
    pub rsvd: [u8; 4],
}
size_check!(DataHeader, 24);

/// R2T header (24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct R2t {
    /// 0: common header.
    pub ch: CommonHeader,
    /// 8: command capsule CID.
    pub cccid: U16,
    /// 10: transfer tag, to echo in the H2CData PDUs.
    pub ttag: U16,
    /// 12: offset of the data asked for.
    pub r2to: U32,
    /// 16: length asked for.
    pub r2tl: U32,
    /// 20: reserved.
    pub rsvd: [u8; 4],
}
size_check!(R2t, 24);

/// H2CTermReq and C2HTermReq header (24 bytes); up to 128 bytes of the offending PDU
/// header follow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct TermReq {
    /// 0: common header.
    pub ch: CommonHeader,
    /// 8: fatal error status.
    pub fes: U16,
    /// 10: fatal error information (the offending field's byte offset, say).
    pub fei: U32,
    /// 14: reserved.
    pub rsvd: [u8; 10],
}
size_check!(TermReq, 24);

/// Most PDU header bytes a terminate request carries.
pub const TERM_REQ_MAX_DATA: usize = 128;

/// Digests negotiated on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// Header digest.
    pub header: bool,
    /// Data digest.
    pub data: bool,
}

impl Digests {
    /// As ICReq/ICResp encode them.
    pub fn bits(self) -> u8 {
        self.header as u8 | (self.data as u8) << 1
    }
    /// From ICReq/ICResp's `dgst`.
    pub fn from_bits(b: u8) -> Digests {
        Digests {
            header: b & 1 != 0,
            data: b & 2 != 0,
        }
    }
}

/// CRC32C as NVMe/TCP digests use it (the standard one: initial value and final xor
/// all ones).
#[inline]
pub fn digest(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// What is wrong with received bytes. Every one of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PduError {
    /// A type a host never receives, or no type at all.
    #[error("unexpected PDU type {0:#x}")]
    UnexpectedType(u8),
    /// The header length does not match the type.
    #[error("PDU type {pdu_type:#x}: header length {hlen}, {want} expected")]
    HeaderLength {
        /// The type.
        pdu_type: u8,
        /// The header length received.
        hlen: u8,
        /// The type's header length.
        want: u8,
    },
    /// The total length is impossible for the type or too large.
    #[error("PDU type {pdu_type:#x}: length {plen} out of range ({min} to {max})")]
    Length {
        /// The type.
        pdu_type: u8,
        /// The length received.
        plen: u32,
        /// The least it may be.
        min: u32,
        /// The most accepted.
        max: u32,
    },
    /// The digest flags disagree with what was negotiated.
    #[error("PDU type {pdu_type:#x}: digest flags {flags:#x} disagree with those negotiated")]
    DigestFlags {
        /// The type.
        pdu_type: u8,
        /// The flags received.
        flags: u8,
    },
    /// The header digest is wrong.
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data digest is wrong.
    #[error("data digest mismatch")]
    DataDigest,
    /// The data offset or length fields are inconsistent.
    #[error(
        "PDU type {pdu_type:#x}: data offset {pdo} / length {datal} inconsistent with PDU length {plen}"
    )]
    DataLayout {
        /// The type.
        pdu_type: u8,
        /// Data offset.
        pdo: u8,
        /// Data length field.
        datal: u32,
        /// PDU length.
        plen: u32,
    },
    /// A field that must hold one value holds another (PDU format version, say).
    #[error("PDU type {pdu_type:#x}: {field} is {value}")]
    Field {
        /// The type.
        pdu_type: u8,
        /// The field.
        field: &'static str,
        /// What it holds.
        value: u32,
    },
}

/// A PDU received by a host.
#[derive(Debug, PartialEq, Eq)]
pub enum RxPdu<'a> {
    /// The controller's answer to ICReq.
    IcResp(IcResp),
    /// A command's completion.
    CapsuleResp(Cqe),
    /// Read data for a command.
    C2HData {
        /// Header.
        hdr: DataHeader,
        /// The data (digest checked).
        data: &'a [u8],
    },
    /// The controller asks for write data.
    R2t(R2t),
    /// The controller ends the connection.
    C2HTermReq {
        /// Fatal error status.
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
}

impl PartialEq for IcResp {
    fn eq(&self, o: &Self) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}
impl Eq for IcResp {}

/// The result of looking at received bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not a whole PDU yet: this many bytes are needed in all (at least 8).
    NeedMore(usize),
    /// A PDU, `len` bytes long.
    Pdu {
        /// The PDU.
        pdu: RxPdu<'a>,
        /// Its length.
        len: usize,
    },
}

impl PduError {
    /// The Fatal Error Status an H2CTermReq reports for it.
    pub fn fes(&self) -> u16 {
        match self {
            PduError::HeaderDigest => fes::HEADER_DIGEST_ERROR,
            PduError::Length { plen, max, .. } if plen > max => fes::DATA_TRANSFER_LIMIT_EXCEEDED,
            PduError::DataLayout { .. } => fes::DATA_TRANSFER_OUT_OF_RANGE,
            _ => fes::INVALID_HEADER_FIELD,
        }
    }
}

/// Parses the PDU at the start of `buf`. `dg` are the negotiated digests (none before
/// ICResp); `max_data` bounds the data a C2HData may carry (the receive buffer's size).
pub fn parse(buf: &[u8], dg: Digests, max_data: u32) -> Result<Parsed<'_>, PduError> {
    let Ok((ch, _)) = CommonHeader::read_from_prefix(buf) else {
        return Ok(Parsed::NeedMore(8));
    };
    let t = ch.pdu_type;
    let want_hlen: u8 = match t {
        pdu_type::IC_RESP => 128,
        pdu_type::CAPSULE_RESP | pdu_type::C2H_DATA | pdu_type::R2T | pdu_type::C2H_TERM_REQ => 24,
        _ => return Err(PduError::UnexpectedType(t)),
    };
    if ch.hlen != want_hlen {
        return Err(PduError::HeaderLength {
            pdu_type: t,
            hlen: ch.hlen,
            want: want_hlen,
        });
    }
    let hlen = want_hlen as u32;
    // Before ICResp nothing is negotiated, and terminate requests never carry digests.
    let (hd, dd) = match t {
        pdu_type::IC_RESP | pdu_type::C2H_TERM_REQ => (false, false),
        _ => (dg.header, dg.data),
    };
    if t != pdu_type::C2H_TERM_REQ && (ch.flags & flags::HDGSTF != 0) != hd {
        return Err(PduError::DigestFlags {
            pdu_type: t,
            flags: ch.flags,
        });
    }
    let hd_len = if hd { 4 } else { 0 };
    let plen = ch.plen.get();
    let (min, max) = match t {
        pdu_type::C2H_DATA => (
            hlen + hd_len,
            (hlen + hd_len + 128 + 4).saturating_add(max_data),
        ),
        pdu_type::C2H_TERM_REQ => (hlen, hlen + TERM_REQ_MAX_DATA as u32),
        _ => (hlen + hd_len, hlen + hd_len),
    };
    if plen < min || plen > max {
        return Err(PduError::Length {
            pdu_type: t,
            plen,
            min,
            max,
        });
    }
    let plen_us = plen as usize;
    if buf.len() < plen_us {
        return Ok(Parsed::NeedMore(plen_us));
    }
    let pdu = &buf[..plen_us];
    let hlen_us = hlen as usize;
    if hd {
        let got = u32::from_le_bytes([
            pdu[hlen_us],
            pdu[hlen_us + 1],
            pdu[hlen_us + 2],
            pdu[hlen_us + 3],
        ]);
        if got != digest(&pdu[..hlen_us]) {
            return Err(PduError::HeaderDigest);
        }
    }
    let field = |field: &'static str, value: u32| PduError::Field {
        pdu_type: t,
        field,
        value,
    };
    let out = match t {
        pdu_type::IC_RESP => {
            let r = IcResp::read_from_bytes(pdu).map_err(|_| field("length", plen))?;
            if r.pfv.get() != 0 {
                return Err(field("pfv", r.pfv.get() as u32));
            }
            if r.cpda > 31 {
                return Err(field("cpda", r.cpda as u32));
            }
            let m = r.maxh2cdata.get();
            if m < 4096 || m % 4 != 0 {
                return Err(field("maxh2cdata", m));
            }
            RxPdu::IcResp(r)
        }
        pdu_type::CAPSULE_RESP => {
            let r = CapsuleResp::read_from_prefix(pdu)
                .map_err(|_| field("length", plen))?
                .0;
            RxPdu::CapsuleResp(r.cqe)
        }
        pdu_type::R2T => {
            let r = R2t::read_from_prefix(pdu)
                .map_err(|_| field("length", plen))?
                .0;
            if r.r2tl.get() == 0 {
                return Err(field("r2tl", 0));
            }
            RxPdu::R2t(r)
        }
        pdu_type::C2H_TERM_REQ => {
            let r = TermReq::read_from_prefix(pdu)
                .map_err(|_| field("length", plen))?
                .0;
            RxPdu::C2HTermReq {
                fes: r.fes.get(),
                fei: r.fei.get(),
            }
        }
        _ => {
            // C2HData: the data sits at pdo, runs datal bytes, then the data digest.
            let h = DataHeader::read_from_prefix(pdu)
                .map_err(|_| field("length", plen))?
                .0;
            if (ch.flags & flags::DDGSTF != 0) != dd {
                return Err(PduError::DigestFlags {
                    pdu_type: t,
                    flags: ch.flags,
                });
            }
            let datal = h.datal.get();
            let bad = PduError::DataLayout {
                pdu_type: t,
                pdo: ch.pdo,
                datal,
                plen,
            };
            let pdo = ch.pdo as u32;
            let dd_len = if dd { 4 } else { 0 };
            if datal == 0
                || datal > max_data
                || pdo < hlen + hd_len
                || pdo as u64 + datal as u64 + dd_len as u64 != plen as u64
            {
                return Err(bad);
            }
            let (s, e) = (pdo as usize, (pdo + datal) as usize);
            let data = &pdu[s..e];
            if dd {
                let got = u32::from_le_bytes([pdu[e], pdu[e + 1], pdu[e + 2], pdu[e + 3]]);
                if got != digest(data) {
                    return Err(PduError::DataDigest);
                }
            }
            RxPdu::C2HData { hdr: h, data }
        }
    };
    Ok(Parsed::Pdu {
        pdu: out,
        len: plen_us,
    })
}

/// Appends an ICReq asking for digests `dg`.
pub fn encode_ic_req(out: &mut Vec<u8>, dg: Digests, maxr2t: u32) {
    let mut r = IcReq::new_zeroed();
    r.ch = CommonHeader {
        pdu_type: pdu_type::IC_REQ,
        flags: 0,
        hlen: 128,
        pdo: 0,
        plen: U32::new(128),
    };
    r.dgst = dg.bits();
    r.maxr2t = U32::new(maxr2t);
    out.extend_from_slice(r.as_bytes());
}

/// [`encode_with`] for data in one slice (the tests' controller).
#[cfg(test)]
fn encode(
    out: &mut Vec<u8>,
    pdu_type: u8,
    extra_flags: u8,
    hdr_rest: &[u8],
    data: &[u8],
    dg: Digests,
    cpda: u8,
) {
    encode_with(
        out,
        pdu_type,
        extra_flags,
        hdr_rest,
        data.len(),
        |o| o.extend_from_slice(data),
        dg,
        cpda,
    )
}

/// Appends a PDU of `pdu_type` with `hdr_rest` after the common header, then its
/// header digest, padding to `pdo`, the data appended by `fill` (exactly `data_len`
/// bytes, from wherever they lie: a caller's scattered buffers go straight into the
/// send buffer) and its data digest.
#[allow(clippy::too_many_arguments)]
fn encode_with(
    out: &mut Vec<u8>,
    pdu_type: u8,
    extra_flags: u8,
    hdr_rest: &[u8],
    data_len: usize,
    fill: impl FnOnce(&mut Vec<u8>),
    dg: Digests,
    cpda: u8,
) {
    let hlen = 8 + hdr_rest.len();
    let hd = if dg.header { 4 } else { 0 };
    let (pdo, dd) = if data_len == 0 {
        (0usize, 0usize)
    } else {
        // Data starts aligned to the controller's PDU data alignment.
        let align = (cpda as usize + 1) * 4;
        (
            (hlen + hd).div_ceil(align) * align,
            if dg.data { 4 } else { 0 },
        )
    };
    let plen = if data_len == 0 {
        hlen + hd
    } else {
        pdo + data_len + dd
    };
    let mut fl = extra_flags;
    if dg.header {
        fl |= flags::HDGSTF;
    }
    if dg.data && data_len != 0 {
        fl |= flags::DDGSTF;
    }
    let start = out.len();
    let ch = CommonHeader {
        pdu_type,
        flags: fl,
        hlen: hlen as u8,
        pdo: pdo as u8,
        plen: U32::new(plen as u32),
    };
    out.extend_from_slice(ch.as_bytes());
    out.extend_from_slice(hdr_rest);
    if dg.header {
        let d = digest(&out[start..start + hlen]);
        out.extend_from_slice(&d.to_le_bytes());
    }
    if data_len != 0 {
        out.resize(start + pdo, 0);
        fill(out);
        // Whatever `fill` did, the PDU is exactly as long as its header says.
        out.resize(start + pdo + data_len, 0);
        if dg.data {
            let d = digest(&out[start + pdo..]);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
}

/// Appends a CapsuleCmd for `sqe` with `data` in the capsule (empty: none).
pub fn encode_capsule_cmd(out: &mut Vec<u8>, sqe: &Sqe, data: &[u8], dg: Digests, cpda: u8) {
    encode_capsule_cmd_with(
        out,
        sqe,
        data.len(),
        |o| o.extend_from_slice(data),
        dg,
        cpda,
    );
}

/// [`encode_capsule_cmd`] with `data_len` bytes of data appended by `fill`.
pub fn encode_capsule_cmd_with(
    out: &mut Vec<u8>,
    sqe: &Sqe,
    data_len: usize,
    fill: impl FnOnce(&mut Vec<u8>),
    dg: Digests,
    cpda: u8,
) {
    encode_with(
        out,
        pdu_type::CAPSULE_CMD,
        0,
        sqe.as_bytes(),
        data_len,
        fill,
        dg,
        cpda,
    );
}

/// [`encode_h2c_data`] with `data_len` bytes of data appended by `fill`.
#[allow(clippy::too_many_arguments)]
pub fn encode_h2c_data_with(
    out: &mut Vec<u8>,
    cccid: u16,
    ttag: u16,
    datao: u32,
    data_len: usize,
    fill: impl FnOnce(&mut Vec<u8>),
    last: bool,
    dg: Digests,
    cpda: u8,
) {
    let h = DataHeader {
        cccid: U16::new(cccid),
        ttag: U16::new(ttag),
        datao: U32::new(datao),
        datal: U32::new(data_len as u32),
        ..Default::default()
    };
    let fl = if last { flags::DATA_LAST } else { 0 };
    encode_with(
        out,
        pdu_type::H2C_DATA,
        fl,
        &h.as_bytes()[8..],
        data_len,
        fill,
        dg,
        cpda,
    );
}

/// Appends an H2CData PDU: `data` at offset `datao` of command `cccid`'s data, answering
/// R2T `ttag`; `last` marks the last PDU of the R2T's range.
#[allow(clippy::too_many_arguments)]
pub fn encode_h2c_data(
    out: &mut Vec<u8>,
    cccid: u16,
    ttag: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    dg: Digests,
    cpda: u8,
) {
    encode_h2c_data_with(
        out,
        cccid,
        ttag,
        datao,
        data.len(),
        |o| o.extend_from_slice(data),
        last,
        dg,
        cpda,
    );
}

/// Appends an H2CTermReq with `fes`/`fei` and up to 128 bytes of the offending header.
pub fn encode_h2c_term_req(out: &mut Vec<u8>, fes: u16, fei: u32, offending: &[u8]) {
    let n = offending.len().min(TERM_REQ_MAX_DATA);
    let t = TermReq {
        ch: CommonHeader {
            pdu_type: pdu_type::H2C_TERM_REQ,
            flags: 0,
            hlen: 24,
            pdo: if n > 0 { 24 } else { 0 },
            plen: U32::new(24 + n as u32),
        },
        fes: U16::new(fes),
        fei: U32::new(fei),
        rsvd: [0; 10],
    };
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(&offending[..n]);
}

/// The encoder, for tests that play the controller.
#[cfg(test)]
pub(crate) fn tests_encode(
    out: &mut Vec<u8>,
    pdu_type: u8,
    extra_flags: u8,
    hdr_rest: &[u8],
    data: &[u8],
    dg: Digests,
) {
    encode(out, pdu_type, extra_flags, hdr_rest, data, dg, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller-side encoder for tests: C2HData.
    fn c2h_data(cccid: u16, data: &[u8], dg: Digests, cpda: u8) -> Vec<u8> {
        let h = DataHeader {
            cccid: U16::new(cccid),
            datal: U32::new(data.len() as u32),
            ..Default::default()
        };
        let mut v = Vec::new();
        encode(
            &mut v,
            pdu_type::C2H_DATA,
            flags::DATA_LAST,
            &h.as_bytes()[8..],
            data,
            dg,
            cpda,
        );
        v
    }

    fn resp(cid: u16, dg: Digests) -> Vec<u8> {
        let mut c = Cqe::new_zeroed();
        c.cid = U16::new(cid);
        let mut v = Vec::new();
        encode(&mut v, pdu_type::CAPSULE_RESP, 0, c.as_bytes(), &[], dg, 0);
        v
    }

    fn ic_resp(dgst: u8, maxh2cdata: u32) -> Vec<u8> {
        let mut r = IcResp::new_zeroed();
        r.ch = CommonHeader {
            pdu_type: pdu_type::IC_RESP,
            flags: 0,
            hlen: 128,
            pdo: 0,
            plen: U32::new(128),
        };
        r.dgst = dgst;
        r.maxh2cdata = U32::new(maxh2cdata);
        r.as_bytes().to_vec()
    }

    const BOTH: Digests = Digests {
        header: true,
        data: true,
    };

    #[test]
    fn layouts_match_the_transport_specification() {
        // ICReq: pfv at 8, hpda at 10, dgst at 11, maxr2t at 12 (figure 26).
        let mut v = Vec::new();
        encode_ic_req(&mut v, BOTH, 0);
        assert_eq!(v.len(), 128);
        assert_eq!(&v[..8], &[0x00, 0, 128, 0, 128, 0, 0, 0]);
        assert_eq!(v[11], 3);
        // CapsuleCmd with 512 bytes in capsule, both digests, CPDA 0: header 72, HDGST,
        // data at 76, DDGST at the end.
        let sqe = Sqe::new(1, 9, 1);
        let mut v = Vec::new();
        encode_capsule_cmd(&mut v, &sqe, &[0xab; 512], BOTH, 0);
        assert_eq!((v[0], v[1], v[2], v[3]), (0x04, 0x03, 72, 76));
        assert_eq!(u32::from_le_bytes([v[4], v[5], v[6], v[7]]), 76 + 512 + 4);
        assert_eq!(&v[8..8 + 64], sqe.as_bytes());
        assert_eq!(
            u32::from_le_bytes([v[72], v[73], v[74], v[75]]),
            crc32c::crc32c(&v[..72])
        );
        // H2CData: cccid at 8, ttag at 10, datao at 12, datal at 16, data at 24 without
        // digests.
        let mut v = Vec::new();
        encode_h2c_data(&mut v, 5, 6, 4096, &[1; 100], true, Digests::default(), 0);
        assert_eq!((v[0], v[1], v[2], v[3]), (0x06, 0x04, 24, 24));
        assert_eq!(&v[8..20], &[5, 0, 6, 0, 0, 0x10, 0, 0, 100, 0, 0, 0]);
        assert_eq!(v.len(), 124);
        // CRC32C as iSCSI and NVMe/TCP use it: the check value of "123456789".
        assert_eq!(digest(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn parses_what_a_controller_sends() {
        let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        for dg in [Digests::default(), BOTH] {
            for cpda in [0u8, 7] {
                let p = c2h_data(3, &data, dg, cpda);
                match parse(&p, dg, 1 << 20).unwrap() {
                    Parsed::Pdu {
                        pdu: RxPdu::C2HData { hdr, data: d },
                        len,
                    } => {
                        assert_eq!((hdr.cccid.get(), len), (3, p.len()));
                        assert_eq!(d, &data[..]);
                    }
                    other => panic!("{other:?}"),
                }
                // Fed a byte at a time, it asks for more, then parses.
                for cut in [0, 1, 7, 8, 23, p.len() - 1] {
                    assert!(matches!(
                        parse(&p[..cut], dg, 1 << 20).unwrap(),
                        Parsed::NeedMore(n) if n > cut
                    ));
                }
            }
            let r = resp(77, dg);
            assert!(matches!(
                parse(&r, dg, 4096).unwrap(),
                Parsed::Pdu { pdu: RxPdu::CapsuleResp(c), .. } if c.cid.get() == 77
            ));
        }
        let ic = ic_resp(3, 131072);
        assert!(matches!(
            parse(&ic, Digests::default(), 4096).unwrap(),
            Parsed::Pdu {
                pdu: RxPdu::IcResp(_),
                len: 128
            }
        ));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let data = [7u8; 512];
        let good = c2h_data(1, &data, BOTH, 0);
        // Flip the header digest, the data digest, the data.
        let mut p = good.clone();
        p[24] ^= 1;
        assert_eq!(parse(&p, BOTH, 4096), Err(PduError::HeaderDigest));
        let mut p = good.clone();
        let n = p.len();
        p[n - 1] ^= 1;
        assert_eq!(parse(&p, BOTH, 4096), Err(PduError::DataDigest));
        let mut p = good.clone();
        p[100] ^= 1;
        assert_eq!(parse(&p, BOTH, 4096), Err(PduError::DataDigest));
        // Digests off on our side, on in the PDU.
        assert!(matches!(
            parse(&good, Digests::default(), 4096),
            Err(PduError::DigestFlags { .. })
        ));
        // Unknown and host-only types.
        for t in [0x00u8, 0x02, 0x04, 0x06, 0x08, 0x0a, 0xff] {
            let mut p = good.clone();
            p[0] = t;
            assert_eq!(parse(&p, BOTH, 4096), Err(PduError::UnexpectedType(t)));
        }
        // More data than the buffer takes.
        assert!(matches!(
            parse(&good, BOTH, 256),
            Err(PduError::Length { .. })
        ));
        // A bogus ICResp.
        let mut ic = ic_resp(0, 100);
        assert!(matches!(
            parse(&ic, Digests::default(), 4096),
            Err(PduError::Field {
                field: "maxh2cdata",
                ..
            })
        ));
        ic[8] = 1;
        assert!(parse(&ic, Digests::default(), 4096).is_err());
    }

    #[test]
    fn random_bytes_and_mutations_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let seeds = [
            c2h_data(1, &[9u8; 1000], BOTH, 3),
            c2h_data(2, &[1u8; 64], Digests::default(), 0),
            resp(3, BOTH),
            ic_resp(3, 65536),
        ];
        for i in 0..200_000 {
            let mut p = if i % 4 == 0 {
                (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect()
            } else {
                seeds[rng.usize(..seeds.len())].clone()
            };
            for _ in 0..rng.usize(1..4) {
                if p.is_empty() {
                    break;
                }
                let at = rng.usize(..p.len());
                match rng.u8(0..3) {
                    0 => p[at] = rng.u8(..),
                    1 => p.truncate(at),
                    _ => p.insert(at, rng.u8(..)),
                }
            }
            let dg = Digests::from_bits(rng.u8(0..4));
            let _ = parse(&p, dg, rng.u32(0..8192));
        }
    }
}

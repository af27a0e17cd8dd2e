//! A null NVMe/TCP target, for benchmarks and for tests of what sits above the
//! transport: one subsystem with one 4 KiB-block namespace whose reads return zeroes and
//! whose writes are dropped, and a discovery subsystem whose log lists it; a thread per
//! connection. It speaks just enough of the admin set for `bdev_nvme_attach_controller`
//! and `bdev_nvme_start_discovery` (Connect, properties, Identify, Set Features, Keep
//! Alive, the discovery log; event requests are held). No digests. Not a target for
//! anything but measuring and exercising the initiator: the real peer of the tests is
//! the kernel's nvmet-tcp (`scripts/vm`).

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use zerocopy::{FromZeros, IntoBytes};

use crate::ctrlr::DISCOVERY_NQN;
use crate::spec::{DiscoveryLogEntry, DiscoveryLogHeader, IdentifyController, IdentifyNamespace};
use crate::tcp::pdu::{flags, pdu_type};

/// What `bdev_nvme_attach_controller` needs to attach controller `name` to the target
/// [`spawn`] returned `addr` for, serving `nqn`.
pub fn attach_opts(name: &str, addr: SocketAddr, nqn: &str) -> crate::bdev::AttachOpts {
    crate::bdev::AttachOpts {
        name: name.into(),
        trtype: "tcp".into(),
        traddr: addr.ip().to_string(),
        trsvcid: Some(addr.port().to_string()),
        subnqn: Some(nqn.into()),
        ..Default::default()
    }
}

/// Listens on `127.0.0.1:port` (0: any free port) and serves every connection on a
/// thread of its own, the subsystem being `nqn`; returns the address.
pub fn spawn(port: u16, nqn: &str) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(("127.0.0.1", port))?;
    let addr = l.local_addr()?;
    let nqn = nqn.to_string();
    std::thread::Builder::new()
        .name("null-target".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let nqn = nqn.clone();
                let _ = std::thread::Builder::new()
                    .name("null-target-conn".into())
                    .spawn(move || {
                        let _ = serve(s, &nqn, addr.port());
                    });
            }
        })?;
    Ok(addr)
}

/// The discovery log: a header and one entry, `nqn` on this port.
fn discovery_log(nqn: &str, port: u16) -> Vec<u8> {
    let mut h = DiscoveryLogHeader::new_zeroed();
    h.genctr.set(1);
    h.numrec.set(1);
    let mut e = DiscoveryLogEntry::new_zeroed();
    e.trtype = 3;
    e.adrfam = 1;
    e.subtype = 2;
    e.portid.set(1);
    e.cntlid.set(0xffff);
    e.asqsz.set(32);
    let put = |f: &mut [u8], v: &str| {
        let n = v.len().min(f.len() - 1);
        f[..n].copy_from_slice(&v.as_bytes()[..n]);
    };
    put(&mut e.trsvcid, &port.to_string());
    put(&mut e.subnqn, nqn);
    put(&mut e.traddr, "127.0.0.1");
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(e.as_bytes());
    v
}

const BLOCKS: u64 = 1 << 24;

fn header(t: u8, fl: u8, hlen: u8, pdo: u8, plen: u32) -> [u8; 8] {
    let p = plen.to_le_bytes();
    [t, fl, hlen, pdo, p[0], p[1], p[2], p[3]]
}

fn resp(w: &mut impl Write, cid: u16, dw0: u32, dw1: u32) -> std::io::Result<()> {
    let mut cqe = [0u8; 16];
    cqe[0..4].copy_from_slice(&dw0.to_le_bytes());
    cqe[4..8].copy_from_slice(&dw1.to_le_bytes());
    cqe[12..14].copy_from_slice(&cid.to_le_bytes());
    w.write_all(&header(pdu_type::CAPSULE_RESP, 0, 24, 0, 24))?;
    w.write_all(&cqe)
}

fn c2h(w: &mut impl Write, cid: u16, data: &[u8]) -> std::io::Result<()> {
    let mut h = [0u8; 24];
    let len = data.len() as u32;
    h[..8].copy_from_slice(&header(
        pdu_type::C2H_DATA,
        flags::DATA_LAST | flags::DATA_SUCCESS,
        24,
        24,
        24 + len,
    ));
    h[8..10].copy_from_slice(&cid.to_le_bytes());
    h[16..20].copy_from_slice(&len.to_le_bytes());
    w.write_all(&h)?;
    w.write_all(data)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn serve(s: TcpStream, nqn: &str, port: u16) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(1 << 20, s.try_clone()?);
    let mut w = BufWriter::with_capacity(1 << 20, s);
    let mut icreq = [0u8; 128];
    r.read_exact(&mut icreq)?;
    let mut icresp = [0u8; 128];
    icresp[..8].copy_from_slice(&header(pdu_type::IC_RESP, 0, 128, 0, 128));
    icresp[12..16].copy_from_slice(&131072u32.to_le_bytes());
    w.write_all(&icresp)?;
    w.flush()?;
    let zeroes = vec![0u8; 1 << 21];
    let mut rest = vec![0u8; 1 << 21];
    let mut ttag = 0u16;
    let mut ctrl = IdentifyController::new_zeroed();
    ctrl.sn[..4].copy_from_slice(b"NULL");
    ctrl.mn[..15].copy_from_slice(b"tcp_null_target");
    ctrl.cntlid.set(1);
    ctrl.ver.set(0x0001_0400);
    ctrl.aerl = 3;
    ctrl.kas.set(10);
    ctrl.nn.set(1);
    ctrl.subnqn[..nqn.len().min(255)].copy_from_slice(&nqn.as_bytes()[..nqn.len().min(255)]);
    ctrl.ioccsz.set((8192 + 64) / 16);
    ctrl.iorcsz.set(1);
    let mut ns = IdentifyNamespace::new_zeroed();
    ns.nsze.set(BLOCKS);
    ns.ncap.set(BLOCKS);
    ns.nuse.set(BLOCKS);
    ns.lbaf[0].lbads = 12;
    let mut list = [0u8; 4096];
    list[0] = 1;
    // Set by Connect: which queue this connection is, and whether it is to the
    // discovery subsystem.
    let (mut qid, mut discovery) = (0u16, false);
    let log = discovery_log(nqn, port);
    loop {
        let mut ch = [0u8; 8];
        if r.read_exact(&mut ch).is_err() {
            return Ok(());
        }
        let plen = u32_at(&ch, 4) as usize;
        if !(8..=rest.len()).contains(&plen) {
            return Ok(());
        }
        r.read_exact(&mut rest[..plen - 8])?;
        match ch[0] {
            pdu_type::CAPSULE_CMD => {
                let sqe = &rest[..64];
                let (opc, cid) = (sqe[0], u16::from_le_bytes([sqe[2], sqe[3]]));
                let len = u32_at(sqe, 32) as usize;
                let in_capsule = ch[3] != 0;
                match opc {
                    // Fabrics: Connect (controller ID 1), Property Get (CAP: MQES 127,
                    // TO 1; VS 1.4; CSTS ready) and Set.
                    0x7f => match sqe[4] {
                        0x01 => {
                            qid = u16::from_le_bytes([sqe[42], sqe[43]]);
                            let d = (ch[3] as usize).saturating_sub(8);
                            let subnqn = rest.get(d + 256..d + 512).unwrap_or(&[]);
                            discovery = crate::spec::get_str(subnqn) == DISCOVERY_NQN;
                            resp(&mut w, cid, 1, 0)?
                        }
                        0x04 => {
                            let v: u64 = match u32_at(sqe, 44) {
                                0x00 => 127 | 1 << 24 | 1 << 37,
                                0x08 => 0x0001_0400,
                                0x1c => 1,
                                _ => 0,
                            };
                            resp(&mut w, cid, v as u32, (v >> 32) as u32)?
                        }
                        _ => resp(&mut w, cid, 0, 0)?,
                    },
                    // Identify: controller, namespace, the NVM command set's controller
                    // data (WZSL 4: 64 KiB), active namespace list.
                    0x06 => match sqe[40] {
                        1 => c2h(&mut w, cid, ctrl.as_bytes())?,
                        0 => c2h(&mut w, cid, ns.as_bytes())?,
                        6 => {
                            let mut nvm = [0u8; 4096];
                            nvm[1] = 4;
                            c2h(&mut w, cid, &nvm)?
                        }
                        _ => c2h(&mut w, cid, &list)?,
                    },
                    // Set Features (Number of Queues: 64 each way).
                    0x09 => resp(&mut w, cid, 63 | 63 << 16, 0)?,
                    // Asynchronous event requests are held.
                    0x0c => {}
                    // Get Log Page on the admin queue: the discovery log on a discovery
                    // controller, zeroes otherwise.
                    0x02 if qid == 0 && discovery && sqe[40] == 0x70 => {
                        c2h(&mut w, cid, &log[..len.min(log.len())])?
                    }
                    // Reads (and other log pages): zeroes.
                    0x02 if len > 0 => c2h(&mut w, cid, &zeroes[..len.min(zeroes.len())])?,
                    // Writes and other commands with data to fetch: R2T for all of it.
                    _ if len > 0 && !in_capsule && opc & 1 == 1 => {
                        ttag = ttag.wrapping_add(1);
                        let mut h = [0u8; 24];
                        h[..8].copy_from_slice(&header(pdu_type::R2T, 0, 24, 0, 24));
                        h[8..10].copy_from_slice(&cid.to_le_bytes());
                        h[10..12].copy_from_slice(&ttag.to_le_bytes());
                        h[16..20].copy_from_slice(&(len as u32).to_le_bytes());
                        w.write_all(&h)?;
                    }
                    _ => resp(&mut w, cid, 0, 0)?,
                }
            }
            pdu_type::H2C_DATA => {
                if ch[1] & flags::DATA_LAST != 0 {
                    resp(&mut w, u16::from_le_bytes([rest[0], rest[1]]), 0, 0)?;
                }
            }
            _ => return Ok(()),
        }
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

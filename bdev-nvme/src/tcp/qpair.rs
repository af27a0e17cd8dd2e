//! An NVMe/TCP queue pair: one non-blocking connection, polled by its thread.
//!
//! Sending appends PDUs to one buffer that `poll` writes out (several commands per
//! `write`); receiving reads what the socket has into one buffer and parses whole PDUs
//! from it. Commands are slots indexed by command ID. Writes up to the in-capsule limit
//! travel in the capsule; larger ones wait for the controller's R2Ts and go out as
//! H2CData PDUs of at most `maxh2cdata` bytes. Reads arrive as C2HData PDUs copied into
//! the command's buffer at their offset; a last C2HData with the SUCCESS flag completes
//! the command without a response capsule.
//!
//! Anything inconsistent from the peer (a bad PDU, data for an unknown command or out of
//! the command's range, an R2T for a read) ends the connection: what is outstanding
//! completes as aborted, and the owner reconnects.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::pdu::{self, Digests, Parsed, RxPdu, flags};
use crate::spec::{SglDescriptor, Sqe, Status, sc, sct, sgl};
use crate::transport::{Completion, IoData, NoIo, Payload, QueuePair, SubmitError};

/// Most data one C2HData PDU may carry here (the receive buffer grows to hold one).
const MAX_C2H_DATA: u32 = 4 << 20;
/// Receive buffer to start with.
const RX_INITIAL: usize = 64 << 10;

#[derive(Debug)]
enum State {
    /// ICReq sent, waiting for ICResp.
    Handshake,
    Ready,
    Failed(String),
}

struct Slot<T> {
    busy: bool,
    token: u64,
    payload: Payload<T>,
    /// Bytes of data moved so far: received (a read; C2HData arrives in order) or asked
    /// for by R2Ts (a write; in-capsule data counts as sent).
    moved: usize,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            busy: false,
            token: 0,
            payload: Payload::None,
            moved: 0,
        }
    }
}

/// A queue pair over NVMe/TCP, whose commands' data may live in caller buffers of type
/// `T` (see [`IoData`]).
pub struct TcpQpair<T: IoData = NoIo> {
    qid: u16,
    sock: TcpStream,
    /// Until the TCP connection is up (the first bytes went out): where to, and by when.
    connecting: Option<(SocketAddr, Instant)>,
    state: State,
    want: Digests,
    dg: Digests,
    cpda: u8,
    maxh2cdata: u32,
    /// Largest write carried in the capsule (0: none).
    icd_max: usize,
    tx: Vec<u8>,
    tx_off: usize,
    rx: Vec<u8>,
    rx_len: usize,
    /// The Fatal Error Status to report when a bad PDU ends the connection.
    term_fes: u16,
    slots: Vec<Slot<T>>,
    free: Vec<u16>,
    outstanding: usize,
}

/// A non-blocking TCP socket whose connection to `addr` is under way (or made).
fn start_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

impl<T: IoData> std::fmt::Debug for TcpQpair<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpQpair(qid {}, {:?})", self.qid, self.state)
    }
}

fn aborted() -> Status {
    Status::new(sct::GENERIC, sc::ABORTED_SQ_DELETION)
}

impl<T: IoData> TcpQpair<T> {
    /// Starts connecting to `addr` and queues ICReq asking for `digests`; the pair is
    /// usable once [`TcpQpair::is_ready`] (keep polling until then). The connection is
    /// made in the background, without blocking the thread (a reactor must never wait on
    /// a target that drops SYNs); it fails if not up within `timeout`. `depth` commands
    /// may be outstanding; writes up to `icd_max` bytes travel in the capsule.
    pub fn connect(
        addr: SocketAddr,
        qid: u16,
        depth: u16,
        digests: Digests,
        icd_max: usize,
        timeout: Duration,
    ) -> Result<TcpQpair<T>, String> {
        let sock = start_connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
        let depth = depth.max(1);
        let mut q = TcpQpair {
            qid,
            sock,
            connecting: Some((addr, Instant::now() + timeout)),
            state: State::Handshake,
            want: digests,
            dg: Digests::default(),
            cpda: 0,
            maxh2cdata: 0,
            icd_max,
            tx: Vec::with_capacity(64 << 10),
            tx_off: 0,
            rx: vec![0; RX_INITIAL],
            rx_len: 0,
            term_fes: pdu::fes::INVALID_HEADER_FIELD,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free: (0..depth).rev().collect(),
            outstanding: 0,
        };
        pdu::encode_ic_req(&mut q.tx, digests, 0);
        Ok(q)
    }

    /// Whether ICResp came back and commands may be submitted.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    /// Why the connection failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(m) => Some(m),
            _ => None,
        }
    }

    /// The digests negotiated.
    pub fn digests(&self) -> Digests {
        self.dg
    }

    /// Sets the in-capsule write limit (from Identify Controller's IOCCSZ).
    pub fn set_icd_max(&mut self, n: usize) {
        self.icd_max = n;
    }

    /// Ends the connection (once): what is outstanding completes aborted at the next
    /// poll. A failure is a warning; a close asked for (a reset, a detach) is not.
    fn end(&mut self, why: String, asked: bool) {
        if !matches!(self.state, State::Failed(_)) {
            if asked {
                tracing::debug!(qid = self.qid, "NVMe/TCP connection closed: {why}");
            } else {
                tracing::warn!(qid = self.qid, "NVMe/TCP connection ends: {why}");
            }
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
            self.state = State::Failed(why);
        }
    }

    fn fail(&mut self, why: String) {
        self.end(why, false);
    }

    fn complete(
        &mut self,
        cid: u16,
        status: Status,
        dw0: u32,
        dw1: u32,
        out: &mut Vec<Completion<T>>,
    ) {
        let Some(s) = self.slots.get_mut(cid as usize) else {
            return;
        };
        if !s.busy {
            return;
        }
        s.busy = false;
        self.outstanding -= 1;
        self.free.push(cid);
        out.push(Completion {
            token: s.token,
            status,
            dw0,
            dw1,
            payload: std::mem::take(&mut s.payload),
        });
    }

    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self) -> Result<(), String> {
        while self.tx_off < self.tx.len() {
            match self.sock.write(&self.tx[self.tx_off..]) {
                Ok(0) => return Err("connection closed while sending".into()),
                Ok(n) => {
                    self.tx_off += n;
                    self.connecting = None;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match self.connecting {
                        Some((addr, _)) => format!("connecting to {addr}: {e}"),
                        None => format!("send: {e}"),
                    });
                }
            }
        }
        if let Some((addr, deadline)) = self.connecting {
            if Instant::now() > deadline {
                return Err(format!("connecting to {addr}: timed out"));
            }
        }
        if self.tx_off == self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        }
        Ok(())
    }

    /// Reads what the socket has and handles every whole PDU.
    fn receive(&mut self, out: &mut Vec<Completion<T>>) -> Result<(), String> {
        loop {
            if self.rx_len == self.rx.len() {
                // Full and no whole PDU in it: parse below says how much is needed.
                break;
            }
            match self.sock.read(&mut self.rx[self.rx_len..]) {
                Ok(0) => return Err("connection closed by the controller".into()),
                Ok(n) => self.rx_len += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match self.connecting {
                        Some((addr, _)) => format!("connecting to {addr}: {e}"),
                        None => format!("receive: {e}"),
                    });
                }
            }
        }
        // The buffer leaves `self` while PDUs borrowing it are handled.
        let mut rx = std::mem::take(&mut self.rx);
        let r = self.handle(&mut rx, out);
        self.rx = rx;
        let start = r?;
        self.rx.copy_within(start..self.rx_len, 0);
        self.rx_len -= start;
        Ok(())
    }

    /// Handles every whole PDU in `rx[..rx_len]`; returns the bytes consumed.
    fn handle(&mut self, rx: &mut Vec<u8>, out: &mut Vec<Completion<T>>) -> Result<usize, String> {
        let mut start = 0;
        let dg = if self.is_ready() {
            self.dg
        } else {
            Digests::default()
        };
        while start < self.rx_len {
            let parsed = pdu::parse(&rx[start..self.rx_len], dg, MAX_C2H_DATA).map_err(|e| {
                self.term_fes = e.fes();
                format!("bad PDU from the controller: {e}")
            })?;
            match parsed {
                Parsed::NeedMore(n) => {
                    if n > rx.len() {
                        // Room for the whole PDU (bounded by the parser's limits).
                        rx.resize(n, 0);
                    }
                    break;
                }
                Parsed::Pdu { pdu, len } => {
                    let action = match pdu {
                        RxPdu::C2HData { hdr, data } => {
                            self.c2h_data(hdr.cccid.get(), hdr.datao.get(), hdr.ch.flags, data)?
                        }
                        RxPdu::IcResp(r) => {
                            if !matches!(self.state, State::Handshake) {
                                return Err("ICResp after the handshake".into());
                            }
                            let got = Digests::from_bits(r.dgst);
                            if (got.header && !self.want.header) || (got.data && !self.want.data) {
                                return Err(format!(
                                    "controller enabled digests {:#x} not asked for",
                                    r.dgst
                                ));
                            }
                            self.dg = got;
                            self.cpda = r.cpda;
                            self.maxh2cdata = r.maxh2cdata.get();
                            self.state = State::Ready;
                            None
                        }
                        RxPdu::CapsuleResp(c) => {
                            Some((c.cid.get(), c.status(), c.dw0.get(), c.dw1.get()))
                        }
                        RxPdu::R2t(r) => {
                            self.r2t(r.cccid.get(), r.ttag.get(), r.r2to.get(), r.r2tl.get())?;
                            None
                        }
                        RxPdu::C2HTermReq { fes, fei } => {
                            return Err(format!(
                                "controller terminated the connection (fes {fes:#x}, fei {fei:#x})"
                            ));
                        }
                    };
                    if let Some((cid, status, dw0, dw1)) = action {
                        if !self.slots.get(cid as usize).is_some_and(|s| s.busy) {
                            return Err(format!("response for unknown command {cid}"));
                        }
                        self.complete(cid, status, dw0, dw1, out);
                    }
                    start += len;
                }
            }
        }
        Ok(start)
    }

    /// Read data for `cid` at `datao`; returns a completion when the PDU says success.
    fn c2h_data(
        &mut self,
        cid: u16,
        datao: u32,
        fl: u8,
        data: &[u8],
    ) -> Result<Option<(u16, Status, u32, u32)>, String> {
        let s = self
            .slots
            .get_mut(cid as usize)
            .filter(|s| s.busy)
            .ok_or_else(|| format!("C2HData for unknown command {cid}"))?;
        if !s.payload.is_in() {
            return Err(format!("C2HData for command {cid}, which reads nothing"));
        }
        let (start, end) = (datao as usize, datao as usize + data.len());
        // In order and without gaps, as SPDK's host requires: a PDU that repeats or skips
        // data would leave stale bytes in a read that then succeeds.
        if start != s.moved {
            return Err(format!(
                "C2HData for command {cid} at offset {start}, expected {}",
                s.moved
            ));
        }
        if !s.payload.write_at(start, data) {
            return Err(format!(
                "C2HData for command {cid} at {start}..{end}, past its {} bytes",
                s.payload.len()
            ));
        }
        s.moved = end;
        if fl & flags::DATA_SUCCESS != 0 {
            if fl & flags::DATA_LAST == 0 {
                return Err("C2HData SUCCESS without LAST".into());
            }
            if end != s.payload.len() {
                return Err(format!(
                    "C2HData SUCCESS for command {cid} after {end} of its {} bytes",
                    s.payload.len()
                ));
            }
            return Ok(Some((cid, Status::default(), 0, 0)));
        }
        Ok(None)
    }

    /// The controller asks for `len` bytes of `cid`'s data from `off`: send them in
    /// H2CData PDUs of at most `maxh2cdata`.
    fn r2t(&mut self, cid: u16, ttag: u16, off: u32, len: u32) -> Result<(), String> {
        let (dg, cpda, max) = (self.dg, self.cpda, self.maxh2cdata.max(4096) as usize);
        let s = self
            .slots
            .get_mut(cid as usize)
            .filter(|s| s.busy)
            .ok_or_else(|| format!("R2T for unknown command {cid}"))?;
        if !s.payload.is_out() {
            return Err(format!("R2T for command {cid}, which writes nothing"));
        }
        let (start, end) = (off as usize, off as usize + len as usize);
        if end > s.payload.len() {
            return Err(format!(
                "R2T for command {cid} at {start}..{end}, past its {} bytes",
                s.payload.len()
            ));
        }
        // Each byte is asked for once, in order (the checks of Linux's host): an R2T
        // that repeats a range would make the host queue the same data without end.
        if len == 0 || start < s.moved {
            return Err(format!(
                "R2T for command {cid} at {start}..{end}, after {} bytes were sent",
                s.moved
            ));
        }
        s.moved = end;
        let s = &self.slots[cid as usize];
        let mut at = start;
        while at < end {
            let k = (end - at).min(max);
            let p = &s.payload;
            pdu::encode_h2c_data_with(
                &mut self.tx,
                cid,
                ttag,
                at as u32,
                k,
                |tx| {
                    p.read_range(at, k, |d| tx.extend_from_slice(d));
                },
                at + k == end,
                dg,
                cpda,
            );
            at += k;
        }
        Ok(())
    }
}

impl TcpQpair<NoIo> {
    /// The same connection, for commands whose data lies in caller buffers of type `U`
    /// (a control-plane Connect done, the I/O path takes it over). Nothing may be
    /// outstanding.
    pub fn into_io<U: IoData>(self) -> Result<TcpQpair<U>, String> {
        if self.outstanding != 0 {
            return Err(format!(
                "queue {}: {} commands outstanding",
                self.qid, self.outstanding
            ));
        }
        Ok(TcpQpair {
            qid: self.qid,
            sock: self.sock,
            connecting: self.connecting,
            state: self.state,
            want: self.want,
            dg: self.dg,
            cpda: self.cpda,
            maxh2cdata: self.maxh2cdata,
            icd_max: self.icd_max,
            tx: self.tx,
            tx_off: self.tx_off,
            rx: self.rx,
            rx_len: self.rx_len,
            term_fes: self.term_fes,
            slots: (0..self.slots.len()).map(|_| Slot::default()).collect(),
            free: self.free,
            outstanding: 0,
        })
    }
}

impl<T: IoData> QueuePair<T> for TcpQpair<T> {
    fn qid(&self) -> u16 {
        self.qid
    }

    fn submit(
        &mut self,
        mut sqe: Sqe,
        payload: Payload<T>,
        token: u64,
    ) -> Result<u16, SubmitError<T>> {
        match &self.state {
            State::Ready => {}
            State::Handshake => {
                return Err(SubmitError::Disconnected(
                    "handshake not done".into(),
                    payload,
                ));
            }
            State::Failed(m) => return Err(SubmitError::Disconnected(m.clone(), payload)),
        }
        let n = payload.len();
        if let Payload::In(b, n) | Payload::Out(b, n) = &payload {
            if *n > b.len() {
                let m = format!("{n} bytes of data in a {}-byte buffer", b.len());
                return Err(SubmitError::Invalid(m, payload));
            }
        }
        if n > u32::MAX as usize {
            return Err(SubmitError::Invalid(format!("{n} bytes of data"), payload));
        }
        let Some(cid) = self.free.pop() else {
            return Err(SubmitError::Full(sqe, payload));
        };
        sqe.cid = cid.into();
        let in_capsule = payload.is_out() && n > 0 && n <= self.icd_max;
        let id = if in_capsule {
            sgl::DATA_BLOCK_OFFSET
        } else {
            sgl::TRANSPORT_DATA_BLOCK
        };
        sqe.set_sgl(SglDescriptor::new(id, 0, n as u32));
        let len = if in_capsule { n } else { 0 };
        pdu::encode_capsule_cmd_with(
            &mut self.tx,
            &sqe,
            len,
            |tx| {
                payload.read_range(0, len, |d| tx.extend_from_slice(d));
            },
            self.dg,
            self.cpda,
        );
        let s = &mut self.slots[cid as usize];
        s.busy = true;
        s.token = token;
        s.payload = payload;
        s.moved = len;
        self.outstanding += 1;
        Ok(cid)
    }

    fn poll(&mut self, out: &mut Vec<Completion<T>>) -> Result<usize, String> {
        let before = out.len();
        if !matches!(self.state, State::Failed(_)) {
            let r = self
                .flush()
                .and_then(|_| self.receive(out))
                .and_then(|_| self.flush());
            if let Err(mut e) = r {
                if let Some((addr, _)) = self.connecting {
                    if !e.starts_with("connecting to") {
                        // Never connected: say so, whatever the socket reported.
                        e = format!("connecting to {addr}: {e}");
                    }
                }
                if e.starts_with("bad PDU") {
                    // Tell the controller why, as the specification asks (best effort).
                    let mut t = Vec::new();
                    pdu::encode_h2c_term_req(&mut t, self.term_fes, 0, &[]);
                    let _ = self.sock.write(&t);
                }
                self.fail(e);
            }
        }
        if let State::Failed(m) = &self.state {
            // Everything outstanding completes aborted (appended to `out`), and the
            // caller hears of the failure.
            let m = m.clone();
            for cid in 0..self.slots.len() as u16 {
                self.complete(cid, aborted(), 0, 0, out);
            }
            return Err(m);
        }
        Ok(out.len() - before)
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn disconnect(&mut self, why: &str) {
        self.end(why.to_string(), true);
    }

    fn interrupt_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        // Readable means a PDU (or the end of the connection) came. Until the TCP
        // connection is up, with bytes the socket did not take, or failed (its I/O to be
        // completed), only polling moves things on: writability is not waited for.
        let quiet = self.connecting.is_none()
            && self.tx_off == self.tx.len()
            && !matches!(self.state, State::Failed(_));
        quiet.then(|| self.sock.as_raw_fd())
    }
}

impl<T: IoData> TcpQpair<T> {
    /// The bytes of the command last queued (for tests).
    #[cfg(test)]
    fn queued(&self) -> &[u8] {
        &self.tx[self.tx_off..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Cqe, nvm};
    use bdev_core::dma::DmaBuf;
    use std::net::TcpListener;
    use zerocopy::little_endian::{U16, U32};
    use zerocopy::{FromZeros, IntoBytes};

    /// A scripted controller on a local socket: answers ICReq, then whatever `script`
    /// writes for each capsule it reads.
    fn peer(script: impl FnOnce(&mut TcpStream) + Send + 'static) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut icreq = [0u8; 128];
            s.read_exact(&mut icreq).unwrap();
            let mut r = pdu::IcResp::new_zeroed();
            r.ch = pdu::CommonHeader {
                pdu_type: pdu::pdu_type::IC_RESP,
                flags: 0,
                hlen: 128,
                pdo: 0,
                plen: U32::new(128),
            };
            r.maxh2cdata = U32::new(8192);
            r.dgst = icreq[11];
            s.write_all(r.as_bytes()).unwrap();
            script(&mut s);
        });
        addr
    }

    fn drive(q: &mut TcpQpair, want: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        while out.len() < want {
            let _ = q.poll(&mut out);
            assert!(t.elapsed() < Duration::from_secs(5), "no completion: {q:?}");
            std::thread::yield_now();
        }
        out
    }

    fn ready(addr: SocketAddr, dg: Digests) -> TcpQpair {
        let mut q = TcpQpair::connect(addr, 1, 8, dg, 4096, Duration::from_secs(2)).unwrap();
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        while !q.is_ready() {
            q.poll(&mut out).unwrap();
            assert!(t.elapsed() < Duration::from_secs(5));
        }
        q
    }

    fn read_capsule(s: &mut TcpStream, dg: Digests) -> (Sqe, Vec<u8>) {
        let mut ch = [0u8; 8];
        s.read_exact(&mut ch).unwrap();
        let plen = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as usize;
        let mut rest = vec![0u8; plen - 8];
        s.read_exact(&mut rest).unwrap();
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        let sqe = zerocopy::FromBytes::read_from_bytes(&all[8..72]).unwrap();
        let pdo = ch[3] as usize;
        let data = if pdo == 0 {
            Vec::new()
        } else {
            all[pdo..plen - if dg.data { 4 } else { 0 }].to_vec()
        };
        (sqe, data)
    }

    #[test]
    fn connecting_never_blocks_the_thread() {
        // A listener whose accept queue is full and never drained: the kernel drops
        // further SYNs, so a blocking connect would wait for minutes. Ours returns at
        // once, and polling reports the failure at the deadline.
        use socket2::{Domain, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(s) = start_connect(addr) {
                fillers.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let t = std::time::Instant::now();
        let mut q = TcpQpair::<NoIo>::connect(
            addr,
            1,
            8,
            Digests::default(),
            0,
            Duration::from_millis(500),
        )
        .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        let mut out = Vec::new();
        let e = loop {
            match q.poll(&mut out) {
                Err(e) => break e,
                Ok(_) => assert!(t.elapsed() < Duration::from_secs(5), "{q:?}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(e.contains(&format!("connecting to {addr}")), "{e}");
        drop(fillers);
    }

    #[test]
    fn reads_and_writes_against_a_scripted_controller() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let addr = peer(move |s| {
            // 1: a read of 6000 bytes, sent as two C2HData, the last with SUCCESS.
            let (sqe, _) = read_capsule(s, dg);
            assert_eq!(sqe.opc, nvm::READ);
            assert_eq!(sqe.sgl().id, sgl::TRANSPORT_DATA_BLOCK);
            let cid = sqe.cid.get();
            for (off, len, last) in [(0usize, 4096usize, false), (4096, 1904, true)] {
                let data: Vec<u8> = (off..off + len).map(|i| i as u8).collect();
                let fl = if last {
                    flags::DATA_LAST | flags::DATA_SUCCESS
                } else {
                    0
                };
                s.write_all(&c2h(cid, off, &data, fl, dg)).unwrap();
            }
            // 2: a small write, in the capsule.
            let (sqe, data) = read_capsule(s, dg);
            assert_eq!((sqe.sgl().id, data.len()), (sgl::DATA_BLOCK_OFFSET, 512));
            assert!(data.iter().all(|&b| b == 0x11));
            s.write_all(&resp(sqe.cid.get(), dg)).unwrap();
            // 3: a 10000-byte write: R2T for all of it, read the H2CData, respond.
            let (sqe, data) = read_capsule(s, dg);
            assert!(data.is_empty());
            s.write_all(&r2t_pdu(sqe.cid.get(), 0, 10000, dg)).unwrap();
            let mut got = 0;
            while got < 10000 {
                let mut ch = [0u8; 8];
                s.read_exact(&mut ch).unwrap();
                assert_eq!(ch[0], pdu::pdu_type::H2C_DATA);
                let plen = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as usize;
                let mut rest = vec![0u8; plen - 8];
                s.read_exact(&mut rest).unwrap();
                let datal = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
                assert!(datal <= 8192, "maxh2cdata respected");
                got += datal;
            }
            s.write_all(&resp(sqe.cid.get(), dg)).unwrap();
            // 4: garbage.
            s.write_all(&[0xee; 64]).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let mut q = ready(addr, dg);
        assert_eq!(q.digests(), dg);
        let buf = DmaBuf::new(8192, 4096).unwrap();
        q.submit(
            crate::spec::rw(0, nvm::READ, 1, 0, 12),
            Payload::In(buf, 6000),
            41,
        )
        .unwrap();
        let c = drive(&mut q, 1);
        assert_eq!((c[0].token, c[0].status), (41, Status::default()));
        let b = c.into_iter().next().unwrap().payload.into_buf().unwrap();
        assert!((0..6000).all(|i| b[i] == i as u8));
        let mut w = DmaBuf::new(512, 512).unwrap();
        w.fill(0x11);
        q.submit(
            crate::spec::rw(0, nvm::WRITE, 1, 0, 1),
            Payload::Out(w, 512),
            42,
        )
        .unwrap();
        assert!(!q.queued().is_empty());
        assert_eq!(drive(&mut q, 1)[0].token, 42);
        let w = DmaBuf::new(10000, 4096).unwrap();
        q.submit(
            crate::spec::rw(0, nvm::WRITE, 1, 0, 20),
            Payload::Out(w, 10000),
            43,
        )
        .unwrap();
        assert_eq!(drive(&mut q, 1)[0].token, 43);
        // The garbage ends the connection: a command in flight completes aborted.
        let r = DmaBuf::new(512, 512).unwrap();
        q.submit(
            crate::spec::rw(0, nvm::READ, 1, 0, 1),
            Payload::In(r, 512),
            44,
        )
        .unwrap();
        let c = drive(&mut q, 1);
        assert_eq!((c[0].token, c[0].status), (44, aborted()));
        assert!(q.failure().is_some_and(|m| m.contains("bad PDU")), "{q:?}");
        assert!(matches!(
            q.submit(Sqe::default(), Payload::None, 0),
            Err(SubmitError::Disconnected(..))
        ));
    }

    /// A controller that answers the first command with `bad`: the connection ends
    /// with the reason, the command completes aborted, and the controller receives an
    /// H2CTermReq with `fes`.
    fn bad_pdu_ends_the_connection(bad: fn(u16, Digests) -> Vec<u8>, reason: &str, fes: u16) {
        let dg = Digests {
            header: true,
            data: true,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let addr = peer(move |s| {
            let (sqe, _) = read_capsule(s, dg);
            s.write_all(&bad(sqe.cid.get(), dg)).unwrap();
            let mut got = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.read_to_end(&mut got);
            tx.send(got).unwrap();
        });
        let mut q = ready(addr, dg);
        let buf = DmaBuf::new(4096, 4096).unwrap();
        q.submit(
            crate::spec::rw(0, nvm::READ, 1, 0, 8),
            Payload::In(buf, 4096),
            7,
        )
        .unwrap();
        let c = drive(&mut q, 1);
        assert_eq!((c[0].token, c[0].status), (7, aborted()), "{reason}");
        assert!(
            q.failure().is_some_and(|m| m.contains(reason)),
            "{reason}: {q:?}"
        );
        drop(q);
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(got.len() >= 24, "{reason}: no H2CTermReq: {got:?}");
        assert_eq!(got[0], pdu::pdu_type::H2C_TERM_REQ, "{reason}");
        assert_eq!(u16::from_le_bytes([got[8], got[9]]), fes, "{reason}");
    }

    fn resp(cid: u16, dg: Digests) -> Vec<u8> {
        let mut c = Cqe::new_zeroed();
        c.cid = U16::new(cid);
        let mut v = Vec::new();
        super::pdu::tests_encode(
            &mut v,
            pdu::pdu_type::CAPSULE_RESP,
            0,
            c.as_bytes(),
            &[],
            dg,
        );
        v
    }

    /// A C2HData PDU carrying `data` at offset `off` of command `cid`'s data.
    fn c2h(cid: u16, off: usize, data: &[u8], fl: u8, dg: Digests) -> Vec<u8> {
        let h = pdu::DataHeader {
            cccid: U16::new(cid),
            datao: U32::new(off as u32),
            datal: U32::new(data.len() as u32),
            ..Default::default()
        };
        let mut v = Vec::new();
        super::pdu::tests_encode(
            &mut v,
            pdu::pdu_type::C2H_DATA,
            fl,
            &h.as_bytes()[8..],
            data,
            dg,
        );
        v
    }

    fn r2t_pdu(cid: u16, off: u32, len: u32, dg: Digests) -> Vec<u8> {
        let r = pdu::R2t {
            cccid: U16::new(cid),
            ttag: U16::new(1),
            r2to: U32::new(off),
            r2tl: U32::new(len),
            ..Default::default()
        };
        let mut v = Vec::new();
        super::pdu::tests_encode(&mut v, pdu::pdu_type::R2T, 0, &r.as_bytes()[8..], &[], dg);
        v
    }

    /// A controller whose data PDUs for the first command (a 16 KiB read or write) break
    /// the transfer's order: the connection ends with `reason`, the command aborted.
    fn sequence_error(write: bool, bad: fn(u16, Digests) -> Vec<u8>, reason: &str) {
        let dg = Digests::default();
        let addr = peer(move |s| {
            let (sqe, _) = read_capsule(s, dg);
            s.write_all(&bad(sqe.cid.get(), dg)).unwrap();
            let mut sink = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.read_to_end(&mut sink);
        });
        let mut q = ready(addr, dg);
        let buf = DmaBuf::new(16384, 4096).unwrap();
        let (opc, p) = if write {
            (nvm::WRITE, Payload::Out(buf, 16384))
        } else {
            (nvm::READ, Payload::In(buf, 16384))
        };
        q.submit(crate::spec::rw(0, opc, 1, 0, 32), p, 7).unwrap();
        let c = drive(&mut q, 1);
        assert_eq!((c[0].token, c[0].status), (7, aborted()), "{reason}");
        assert!(
            q.failure().is_some_and(|m| m.contains(reason)),
            "{reason}: {q:?}"
        );
    }

    #[test]
    fn data_out_of_sequence_ends_the_connection() {
        // A read "succeeding" after 512 of its 16384 bytes: stale bytes would pass as data.
        sequence_error(
            false,
            |cid, dg| {
                c2h(
                    cid,
                    0,
                    &[0x5a; 512],
                    flags::DATA_LAST | flags::DATA_SUCCESS,
                    dg,
                )
            },
            "after 512 of its 16384 bytes",
        );
        // Read data that skips ahead.
        sequence_error(
            false,
            |cid, dg| c2h(cid, 4096, &[0x5a; 4096], 0, dg),
            "at offset 4096, expected 0",
        );
        // The same R2T again and again: each would queue the data once more, without end.
        sequence_error(
            true,
            |cid, dg| {
                let mut v = r2t_pdu(cid, 0, 16384, dg);
                v.extend(r2t_pdu(cid, 0, 16384, dg));
                v
            },
            "after 16384 bytes were sent",
        );
        // An R2T for nothing (refused by the parser already).
        sequence_error(true, |cid, dg| r2t_pdu(cid, 0, 0, dg), "r2tl is 0");
    }

    #[test]
    fn bad_pdus_end_the_connection_with_a_termination_request() {
        // A response whose header digest is wrong.
        bad_pdu_ends_the_connection(
            |cid, dg| {
                let mut v = resp(cid, dg);
                v[24] ^= 1;
                v
            },
            "header digest",
            pdu::fes::HEADER_DIGEST_ERROR,
        );
        // Read data whose data digest is wrong.
        bad_pdu_ends_the_connection(
            |cid, dg| {
                let fl = flags::DATA_LAST | flags::DATA_SUCCESS;
                let mut v = c2h(cid, 0, &[0x5a; 4096], fl, dg);
                let n = v.len();
                v[n - 1] ^= 0x80;
                v
            },
            "data digest",
            pdu::fes::INVALID_HEADER_FIELD,
        );
        // A PDU type that does not exist.
        bad_pdu_ends_the_connection(
            |_, _| vec![0x55, 0, 8, 0, 8, 0, 0, 0],
            "bad PDU",
            pdu::fes::INVALID_HEADER_FIELD,
        );
        // A response claiming a length far beyond any PDU's.
        bad_pdu_ends_the_connection(
            |cid, dg| {
                let mut v = resp(cid, dg);
                v[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
                v
            },
            "length",
            pdu::fes::DATA_TRANSFER_LIMIT_EXCEEDED,
        );
    }
}

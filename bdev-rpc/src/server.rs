//! The server: a listener and its connections, served by a poller.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use bdev_core::config::Methods;
use bdev_core::thread::{PollStatus, Poller, PollerRef, spawn_local};
use serde_json::{Value, json};

use crate::codes;
use crate::decode::decode_error;

/// Largest request accepted, as the issue asks (SPDK grows its buffer up to a limit too).
pub const MAX_REQUEST: usize = 1 << 20;
/// How often the server looks at its socket, in microseconds.
const POLL_US: u64 = 1000;
/// Most clients connected at once (SPDK's `SPDK_JSONRPC_MAX_CONNS`); more are closed.
pub const MAX_CONNS: usize = 64;
/// A client with this many answer bytes unread, or this many requests running, is not
/// read from until it catches up (its requests wait in the socket).
const MAX_OUT: usize = 16 << 20;
const MAX_PENDING: usize = 1024;

/// The JSON-RPC error for a method's failure, as SPDK answers it: params that don't decode
/// get the code and message SPDK gives for that method (see [`decode_error`]), with what
/// is wrong appended; other params errors get "invalid params"; everything else gets its
/// negative errno (SPDK's convention) and this error's text.
pub fn rpc_error(e: &bdev_core::Error) -> (i32, String) {
    match e {
        bdev_core::Error::Decode { method, reason } => {
            let (code, message) = decode_error(method);
            (code, format!("{message}: {reason}"))
        }
        bdev_core::Error::InvalidParam { what, .. } if what.starts_with("params") => {
            (codes::INVALID_PARAMS, e.to_string())
        }
        _ => (e.errno(), e.to_string()),
    }
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Rc<RefCell<VecDeque<u8>>>,
    /// Requests dispatched and not yet answered.
    pending: Rc<RefCell<usize>>,
    /// Stop reading (peer closed or sent garbage); close once answers are written.
    closing: bool,
    /// Bytes arrived since the last parse (an unfinished request is parsed again only
    /// then, not on every poll).
    fresh: bool,
}

struct Inner {
    listener: UnixListener,
    path: PathBuf,
    conns: Vec<Conn>,
    methods: Rc<Methods>,
    /// In interrupt mode: an epoll set of the listener and every connection, the fd the
    /// (then active) poller sleeps on, and the poller, told after each run whether it
    /// may.
    ep: Option<(Epoll, PollerRef)>,
}

/// An epoll instance: readable when one of its sockets is (SPDK's fd group). A closed
/// socket leaves the set by itself.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: epoll_create1 takes a flag and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input (level-triggered).
    fn add(&self, fd: RawFd) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: both fds are open; `ev` is a live epoll_event the kernel only reads.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A running server. Dropping it stops serving and removes the socket file.
pub struct RpcServer {
    inner: Rc<RefCell<Inner>>,
    _poller: Poller,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RpcServer({})", self.inner.borrow().path.display())
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.inner.borrow().path);
    }
}

impl RpcServer {
    /// Listens on `path` and serves `methods` from a poller of the current thread. A socket
    /// file another process still listens on is an error, as in SPDK; a stale one is
    /// replaced.
    pub fn listen(path: &Path, methods: Rc<Methods>) -> bdev_core::Result<RpcServer> {
        let io_err = |op: &str, e: std::io::Error| {
            bdev_core::Error::invalid("rpc socket", format!("{op} {}: {e}", path.display()))
        };
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(bdev_core::Error::invalid(
                    "rpc socket",
                    format!(
                        "RPC Unix domain socket path {} in use. Specify another.",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| io_err("removing stale", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| io_err("binding", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("configuring", e))?;
        // In interrupt mode the server sleeps on its sockets; polling, it looks every
        // POLL_US, as SPDK's RPC poller does.
        let ep = if bdev_core::app::interrupt_mode() {
            let ep = Epoll::new().map_err(|e| io_err("epoll for", e))?;
            ep.add(listener.as_raw_fd())
                .map_err(|e| io_err("epoll for", e))?;
            Some(ep)
        } else {
            None
        };
        let period = if ep.is_some() { 0 } else { POLL_US };
        let inner = Rc::new(RefCell::new(Inner {
            listener,
            path: path.to_path_buf(),
            conns: Vec::new(),
            methods,
            ep: None,
        }));
        let weak = Rc::downgrade(&inner);
        let poller = Poller::register_us("rpc_server", period, move || match weak.upgrade() {
            Some(i) => poll(&i),
            None => PollStatus::Idle,
        })?;
        if let Some(ep) = ep {
            poller.set_interrupt_fd(ep.0.as_raw_fd());
            inner.borrow_mut().ep = Some((ep, poller.downgrade()));
        }
        tracing::info!(path = %path.display(), "JSON-RPC server listening");
        Ok(RpcServer {
            inner,
            _poller: poller,
        })
    }

    /// The socket path.
    pub fn path(&self) -> PathBuf {
        self.inner.borrow().path.clone()
    }
}

fn poll(inner: &Rc<RefCell<Inner>>) -> PollStatus {
    let mut busy = false;
    let mut me = inner.borrow_mut();
    loop {
        match me.listener.accept() {
            Ok((stream, _)) => {
                if me.conns.len() >= MAX_CONNS {
                    // Closed as it drops, as SPDK does.
                    tracing::warn!("rpc: {MAX_CONNS} clients connected already; closing a new one");
                    continue;
                }
                if let Some((ep, _)) = &me.ep {
                    if let Err(e) = ep.add(stream.as_raw_fd()) {
                        // Unwatched, its requests would wait for some other wake-up.
                        tracing::warn!("rpc: watching a new client: {e}; closing it");
                        continue;
                    }
                }
                if stream.set_nonblocking(true).is_ok() {
                    me.conns.push(Conn {
                        stream,
                        inbuf: Vec::new(),
                        out: Rc::default(),
                        pending: Rc::default(),
                        closing: false,
                        fresh: false,
                    });
                    busy = true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::warn!("rpc accept: {e}");
                break;
            }
        }
    }
    let methods = me.methods.clone();
    for c in me.conns.iter_mut() {
        busy |= read(c);
        busy |= dispatch(c, &methods);
        busy |= write(c);
    }
    me.conns
        .retain(|c| !(c.closing && *c.pending.borrow() == 0 && c.out.borrow().is_empty()));
    if let Some((ep, p)) = &me.ep {
        // Sleep on the sockets only when nothing is under way here: a request running
        // (its answer is written by this poller), answers not yet taken by a client
        // (writability isn't watched), or requests held back unread.
        let quiet = me
            .conns
            .iter()
            .all(|c| *c.pending.borrow() == 0 && c.out.borrow().is_empty() && !c.fresh);
        p.set_interrupt_fd(quiet.then(|| ep.0.as_raw_fd()));
    }
    PollStatus::from(busy)
}

fn read(c: &mut Conn) -> bool {
    if c.closing || c.out.borrow().len() > MAX_OUT || *c.pending.borrow() > MAX_PENDING {
        return false;
    }
    let mut got = false;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                c.closing = true;
                break;
            }
            Ok(n) => {
                got = true;
                c.fresh = true;
                c.inbuf.extend_from_slice(&chunk[..n]);
                if c.inbuf.len() > MAX_REQUEST {
                    // Complete requests before the limit are served first (dispatch);
                    // what is left then is checked against it.
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                c.closing = true;
                break;
            }
        }
    }
    got
}

/// Parses every complete request in the buffer and starts it; then an unfinished one
/// larger than [`MAX_REQUEST`] is refused.
fn dispatch(c: &mut Conn, methods: &Rc<Methods>) -> bool {
    if !c.fresh {
        return false;
    }
    c.fresh = false;
    let mut busy = false;
    // What was parsed goes from the buffer once, at the end (not request by request).
    let mut at = 0;
    let incomplete = loop {
        let start = at
            + c.inbuf[at..]
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(c.inbuf.len() - at);
        if start == c.inbuf.len() {
            at = start;
            break false;
        }
        let mut it = serde_json::Deserializer::from_slice(&c.inbuf[start..]).into_iter::<Value>();
        let (v, used) = match it.next() {
            Some(Ok(v)) => (v, it.byte_offset()),
            Some(Err(e)) if e.is_eof() => {
                at = start;
                break true;
            }
            Some(Err(_)) | None => {
                respond(
                    c,
                    &Some(Value::Null),
                    Err((codes::PARSE_ERROR, "Parse error".into())),
                );
                c.inbuf.clear();
                c.closing = true;
                return true;
            }
        };
        at = start + used;
        busy = true;
        start_request(c, methods, v);
        if c.closing {
            break false;
        }
    };
    c.inbuf.drain(..at);
    if incomplete && c.inbuf.len() > MAX_REQUEST {
        let msg = format!("Invalid request: larger than {MAX_REQUEST} bytes");
        respond(c, &Some(Value::Null), Err((codes::INVALID_REQUEST, msg)));
        c.inbuf.clear();
        c.closing = true;
        return true;
    }
    busy
}

fn start_request(c: &mut Conn, methods: &Rc<Methods>, v: Value) {
    // A request without an id is a notification: it runs, and gets no answer. A request
    // that is not valid is no notification: it is answered, with id null if it has none.
    let id = v.get("id").cloned();
    let bad_id = Some(id.clone().unwrap_or(Value::Null));
    let Value::Object(mut obj) = v else {
        return respond(
            c,
            &Some(Value::Null),
            Err((codes::INVALID_REQUEST, "Invalid request".into())),
        );
    };
    if obj.get("jsonrpc").and_then(|j| j.as_str()) != Some("2.0") {
        return respond(
            c,
            &bad_id,
            Err((codes::INVALID_REQUEST, "Invalid request".into())),
        );
    }
    let Some(method) = obj
        .get("method")
        .and_then(|m| m.as_str())
        .map(str::to_string)
    else {
        return respond(
            c,
            &bad_id,
            Err((codes::INVALID_REQUEST, "Invalid request".into())),
        );
    };
    // Taken, not cloned: no second copy of what params carry (key material).
    let params = obj.remove("params");
    if params
        .as_ref()
        .is_some_and(|p| !p.is_object() && !p.is_array() && !p.is_null())
    {
        return respond(
            c,
            &bad_id,
            Err((codes::INVALID_REQUEST, "Invalid request".into())),
        );
    }
    if !methods.contains(&method) {
        return respond(
            c,
            &id,
            Err((codes::METHOD_NOT_FOUND, "Method not found".into())),
        );
    }
    let (out, pending, m) = (c.out.clone(), c.pending.clone(), methods.clone());
    *pending.borrow_mut() += 1;
    let spawned = spawn_local(async move {
        let r = m.call_rpc(&method, params).await;
        let r = r.map_err(|e| rpc_error(&e));
        push_response(&out, &id, r);
        *pending.borrow_mut() -= 1;
    });
    if let Err(e) = spawned {
        *c.pending.borrow_mut() -= 1;
        let id = obj.get("id").cloned();
        respond(c, &id, Err((codes::INTERNAL_ERROR, e.to_string())));
    }
}

fn respond(c: &Conn, id: &Option<Value>, r: Result<Value, (i32, String)>) {
    push_response(&c.out, id, r);
}

fn push_response(out: &RefCell<VecDeque<u8>>, id: &Option<Value>, r: Result<Value, (i32, String)>) {
    // Notifications (no id) get no answer, as JSON-RPC 2.0 says; errors about
    // unparseable requests go out with id null.
    let Some(id) = id else { return };
    let body = match r {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    };
    if let Ok(bytes) = serde_json::to_vec(&body) {
        let mut o = out.borrow_mut();
        o.extend(bytes);
        o.push_back(b'\n');
    }
}

fn write(c: &mut Conn) -> bool {
    let mut busy = false;
    loop {
        let r = {
            let o = c.out.borrow();
            if o.is_empty() {
                return busy;
            }
            // Straight from the queue: nothing copied for a client that isn't reading.
            (&c.stream).write(o.as_slices().0)
        };
        match r {
            Ok(0) => {
                c.closing = true;
                c.out.borrow_mut().clear();
                return busy;
            }
            Ok(n) => {
                c.out.borrow_mut().drain(..n);
                busy = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return busy,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                // The peer is gone: drop what it won't read.
                c.closing = true;
                c.out.borrow_mut().clear();
                return busy;
            }
        }
    }
}

//! What tests of the command-line tools share: a JSON-RPC client for bdevd's (or
//! bdevperf's) socket, a daemon stopped however the test ends, and bdevperf's `Total`
//! row read back.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A JSON-RPC connection, answers read one JSON value at a time.
#[derive(Debug)]
pub struct RpcClient {
    s: UnixStream,
    buf: Vec<u8>,
    id: u64,
}

impl RpcClient {
    /// Connects to `sock` (answers awaited at most 60 s).
    pub fn connect(sock: &Path) -> RpcClient {
        let s = UnixStream::connect(sock)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        RpcClient {
            s,
            buf: Vec::new(),
            id: 0,
        }
    }

    /// Sends raw bytes and reads one JSON value back (None if the server closed). A
    /// write cut short by the server closing (after an oversized request) still reads
    /// its answer.
    pub fn raw(&mut self, bytes: &[u8]) -> Option<Value> {
        let _ = self.s.write_all(bytes);
        loop {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    self.buf.drain(..used);
                    return Some(v);
                }
                Some(Err(e)) if !e.is_eof() => panic!("server sent bad JSON: {e}"),
                _ => {}
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Calls `method` (no params when `params` is null) and returns the whole answer.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": self.id});
        if !params.is_null() {
            req["params"] = params;
        }
        let v = self
            .raw(&serde_json::to_vec(&req).unwrap())
            .unwrap_or_else(|| panic!("{method}: the server closed the connection"));
        assert_eq!(v["id"], self.id, "{v}");
        v
    }
}

/// One call on a connection of its own.
pub fn rpc(sock: &Path, method: &str, params: Value) -> Value {
    RpcClient::connect(sock).call(method, params)
}

/// Waits until something listens on `sock`.
pub fn wait_for_socket(sock: &Path, timeout: Duration) {
    let t = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(
            t.elapsed() < timeout,
            "nothing listens on {} after {timeout:?}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon (bdevd, bdevperf -z) killed when dropped, however the test ends.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its RPC socket.
    pub sock: PathBuf,
}

impl Daemon {
    /// Takes `child` once it listens on `sock` (20 s at most).
    pub fn new(child: Child, sock: PathBuf) -> Daemon {
        let d = Daemon { child, sock };
        wait_for_socket(&d.sock, Duration::from_secs(20));
        d
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// bdevperf's `Total` row: its first four columns (the latencies follow).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Total {
    /// I/O per second.
    pub iops: f64,
    /// MiB per second.
    pub mibs: f64,
    /// Failed I/O per second.
    pub fails: f64,
    /// Timed-out I/O per second.
    pub timeouts: f64,
}

/// The `Total` row of bdevperf's output, if there is one.
pub fn total(out: &str) -> Option<Total> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start_matches(['\r', ' ']).starts_with("Total"))?;
    let c: Vec<f64> = line
        .split(':')
        .nth(1)?
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (c.len() >= 4).then(|| Total {
        iops: c[0],
        mibs: c[1],
        fails: c[2],
        timeouts: c[3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_row() {
        let out = "Job: x\n\r Total                       :   313.41       1.22       0.50     0.00   25521.14    1693.57  174264.45\n";
        assert_eq!(
            total(out),
            Some(Total {
                iops: 313.41,
                mibs: 1.22,
                fails: 0.5,
                timeouts: 0.0
            })
        );
        assert_eq!(total("no table"), None);
    }
}

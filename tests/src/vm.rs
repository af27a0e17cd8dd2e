//! Real NVMe peers for tests: the Linux kernel's NVMe-oF TCP target (`nvmet-tcp`)
//! running in a throw-away QEMU guest, driven by the project's harness in
//! `scripts/vm/` (see `scripts/vm/README.md`).
//!
//! A test first asks [`skip_reason`]; where QEMU can run it calls
//! [`start_tcp_target`], talks NVMe/TCP to `127.0.0.1:`[`TcpTarget::port`], and
//! lets the [`TcpTarget`] drop, which stops the guest:
//!
//! ```no_run
//! if let Some(why) = bdev_tests::vm::skip_reason() {
//!     eprintln!("skipped: {why}");
//!     return;
//! }
//! let target = bdev_tests::vm::start_tcp_target().expect("nvmet-tcp guest");
//! let _stream = std::net::TcpStream::connect(target.io_addr()).expect("connect");
//! // ... ICReq, Fabrics Connect to target.subnqn, I/O on nsid 1 ...
//! ```
//!
//! Booting takes 10 to 20 s here (software emulation); the first call on a fresh
//! machine also installs the Debian packages and builds the guest image (a few
//! minutes, root only). Every guest gets its own instance name and port pair, so
//! tests may run in parallel, though each guest costs about 300 MB and a good part
//! of a core. A watcher started by `boot.sh --owner-pid` stops the guest if the test
//! process dies without dropping its target.
//!
//! Environment: `BDEV_VMLAB` moves the work dir (default `/tmp/bdev-vmlab`),
//! `BDEV_VM_SKIP=1` makes [`skip_reason`] report a skip, and
//! `BDEV_VM_TIMEOUT_SECS` changes the time allowed to prepare the machine or to
//! boot a guest (defaults [`PREPARE_TIMEOUT`], [`BOOT_TIMEOUT`]).

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// NQN of the NVM subsystem the guest exports (both namespaces below).
pub const SUBNQN: &str = "nqn.2024-01.io.vmlab:test";

/// The well-known NQN of an NVMe-oF discovery controller.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Namespace 1: a memory-backed `null_blk` device of 1 GiB with 512-byte blocks.
pub const NS1_ID: u32 = 1;

/// Block size of namespace 1, in bytes.
pub const NS1_BLOCK_SIZE: u32 = 512;

/// Number of blocks of namespace 1 (1 GiB of 512-byte blocks).
pub const NS1_BLOCKS: u64 = 2_097_152;

/// Namespace 2: a 256 MiB file on the guest's tmpfs (buffered I/O).
pub const NS2_ID: u32 = 2;

/// Block size of namespace 2, in bytes (nvmet takes the file system's block size).
pub const NS2_BLOCK_SIZE: u32 = 4096;

/// Number of blocks of namespace 2 (256 MiB of 4 KiB blocks).
pub const NS2_BLOCKS: u64 = 65_536;

/// Time allowed to prepare the machine (install packages, build the guest image),
/// unless `BDEV_VM_TIMEOUT_SECS` says otherwise.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(1200);

/// Time allowed for a guest to boot and bring its target up (10 to 20 s seen
/// here), unless `BDEV_VM_TIMEOUT_SECS` says otherwise.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Time allowed for `boot.sh --stop` (it sends SIGTERM, then SIGKILL after 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running guest with the kernel's NVMe-oF TCP target, reachable on the host's
/// loopback. Dropping it stops the guest (`boot.sh --stop`) and removes its run
/// directory, which is kept when the drop happens during a panic (for its console
/// log).
///
/// The discovery log reports the guest's own address (`10.0.2.15`) and ports
/// (4420, 8009): connect to [`TcpTarget::port`] / [`TcpTarget::discovery_port`]
/// on `127.0.0.1` instead of following the log entries. The discovery controller
/// needs CC.EN=1 (Property Set) before Get Log Page, or it answers status 0x6001.
#[derive(Debug)]
pub struct TcpTarget {
    /// Host loopback port forwarded to the guest's NVMe/TCP I/O port (4420). The
    /// discovery subsystem answers here too.
    pub port: u16,
    /// Host loopback port forwarded to the guest's discovery port (8009).
    pub discovery_port: u16,
    /// NQN of the NVM subsystem (equal to [`SUBNQN`]).
    pub subnqn: String,
    /// Instance name given to `boot.sh --name` (unique in this process).
    pub name: String,
    /// The instance's run directory: `ports`, `console.log`, `qemu.pid`, sockets.
    pub run_dir: PathBuf,
    stopped: bool,
}

impl TcpTarget {
    /// `127.0.0.1:port`, the address of the NVM subsystem's I/O port.
    pub fn io_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `127.0.0.1:discovery_port`, the address of the discovery port.
    pub fn discovery_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.discovery_port))
    }

    /// Path of the guest's serial console log.
    pub fn console_log_path(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The guest's serial console so far (kernel messages, scenario output), for
    /// test failure messages. Empty if it cannot be read.
    pub fn console_log(&self) -> String {
        fs::read(self.console_log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Runs a shell command in the guest (over its serial console, `vmexec.py`); its
    /// output, or why it failed.
    pub fn exec(&self, cmd: &str) -> Result<String, String> {
        let out = Command::new("python3")
            .arg(scripts_dir().join("vmexec.py"))
            .arg(&self.name)
            .arg(cmd)
            .arg("60")
            .env("BDEV_VMLAB", lab_dir())
            .output()
            .map_err(|e| format!("vmexec: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "guest command '{cmd}' failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Freezes the guest (SIGSTOP to QEMU): the target stops answering, its
    /// connections stay open. [`TcpTarget::resume`] lets it go on.
    pub fn pause(&self) -> Result<(), String> {
        self.signal("STOP")
    }

    /// Lets a paused guest go on (SIGCONT).
    pub fn resume(&self) -> Result<(), String> {
        self.signal("CONT")
    }

    fn signal(&self, sig: &str) -> Result<(), String> {
        let pid = fs::read_to_string(self.run_dir.join("qemu.pid"))
            .map_err(|e| format!("qemu.pid: {e}"))?;
        let st = Command::new("kill")
            .args([&format!("-{sig}"), pid.trim()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("kill -{sig} {}: {st}", pid.trim()))
        }
    }

    /// Stops the guest now (dropping the target does the same, ignoring errors).
    /// Calling it again does nothing.
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let log = lab_dir().join(format!("{}.stop.log", self.name));
        let res = run_script(&["--stop", self.name.as_str()], &log, STOP_TIMEOUT);
        let _ = fs::remove_file(&log);
        res.and_then(|st| {
            if st.success() {
                Ok(())
            } else {
                Err(format!("boot.sh --stop {} exited with {st}", self.name))
            }
        })
    }
}

impl Drop for TcpTarget {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("vm: stopping guest {}: {e}", self.name);
        }
        if thread::panicking() {
            eprintln!("vm: keeping {} for its console log", self.run_dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.run_dir);
            let _ = fs::remove_file(lab_dir().join(format!("{}.boot.log", self.name)));
        }
    }
}

/// Directory of the harness scripts (`<workspace>/scripts/vm`).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("vm")
}

/// The harness's work dir: `$BDEV_VMLAB`, default `/tmp/bdev-vmlab`.
pub fn lab_dir() -> PathBuf {
    match std::env::var_os("BDEV_VMLAB") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/tmp/bdev-vmlab"),
    }
}

/// Why a QEMU guest cannot run here, or `None` if it can.
///
/// The first call prepares the machine (`boot.sh --prepare`: as root it installs
/// the missing Debian packages and builds the guest image; this can take minutes
/// once) and the answer is kept for the rest of the process. Reasons: `BDEV_VM_SKIP`
/// is set, not Linux x86-64, the harness or `bash` missing, the preparation failed
/// (for instance not root with packages missing), or `qemu-system-x86_64` still
/// absent after the install attempt.
pub fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(find_skip_reason).clone()
}

fn find_skip_reason() -> Option<String> {
    if std::env::var_os("BDEV_VM_SKIP").is_some_and(|v| !v.is_empty() && v != "0") {
        return Some("BDEV_VM_SKIP is set".into());
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Some("the QEMU guest harness needs an x86-64 Linux host".into());
    }
    let boot = scripts_dir().join("boot.sh");
    if !boot.is_file() {
        return Some(format!("{} not found", boot.display()));
    }
    let root = is_root();
    let log = lab_dir().join(format!("prepare-{}.log", std::process::id()));
    let res = run_script(&["--prepare", "-s", "tcp"], &log, timeout(PREPARE_TIMEOUT));
    let out = tail(&log, 15);
    let _ = fs::remove_file(&log);
    match res {
        Ok(st) if st.success() => {}
        Ok(st) => {
            let who = if root {
                "as root"
            } else {
                "not root, so nothing could be installed"
            };
            return Some(format!(
                "preparing the QEMU guest failed ({who}): boot.sh --prepare exited with {st}:\n{out}"
            ));
        }
        Err(e) => return Some(format!("preparing the QEMU guest failed: {e}\n{out}")),
    }
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match qemu {
        Ok(st) if st.success() => None,
        Ok(st) => Some(format!("qemu-system-x86_64 --version exited with {st}")),
        Err(e) => Some(format!(
            "qemu-system-x86_64 absent after the install attempt: {e}"
        )),
    }
}

/// Boots a guest with the kernel's NVMe-oF TCP target (`boot.sh -s tcp --bg`) and
/// returns once the target listens, with the forwarded loopback ports.
///
/// Fails with the reason from [`skip_reason`] where QEMU cannot run, and with the
/// end of `boot.sh`'s output and of the guest console when the boot fails or
/// exceeds the timeout (the guest is stopped then).
pub fn start_tcp_target() -> Result<TcpTarget, String> {
    if let Some(why) = skip_reason() {
        return Err(format!("QEMU guest unavailable: {why}"));
    }
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "tcp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let lab = lab_dir();
    let run_dir = lab.join("run").join(&name);
    let log = lab.join(format!("{name}.boot.log"));
    let limit = timeout(BOOT_TIMEOUT);
    let pid = std::process::id().to_string();
    let wait = limit.as_secs().max(30).to_string();
    let args = [
        "-s",
        "tcp",
        "--bg",
        "--name",
        name.as_str(),
        "--owner-pid",
        pid.as_str(),
        "--wait-ready",
        wait.as_str(),
    ];
    let started = run_script(&args, &log, limit + Duration::from_secs(60));
    let failure = |what: String| {
        let _ = run_script(
            &["--stop", name.as_str()],
            &lab.join(format!("{name}.stop.log")),
            STOP_TIMEOUT,
        );
        let _ = fs::remove_file(lab.join(format!("{name}.stop.log")));
        format!(
            "{what}\n--- boot.sh output ({}):\n{}\n--- guest console ({}):\n{}",
            log.display(),
            tail(&log, 20),
            run_dir.join("console.log").display(),
            tail(&run_dir.join("console.log"), 30)
        )
    };
    match started {
        Ok(st) if st.success() => {}
        Ok(st) => return Err(failure(format!("boot.sh -s tcp --bg exited with {st}"))),
        Err(e) => return Err(failure(e)),
    }
    let ports_file = run_dir.join("ports");
    let ports = fs::read_to_string(&ports_file)
        .map_err(|e| failure(format!("reading {}: {e}", ports_file.display())))?;
    let field = |key: &str| {
        ports
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let port_of = |key: &str| field(key).and_then(|v| v.parse::<u16>().ok());
    let (Some(port), Some(discovery_port)) = (port_of("nvme_tcp"), port_of("discovery")) else {
        return Err(failure(format!(
            "no nvme_tcp=/discovery= ports in {}: {ports:?}",
            ports_file.display()
        )));
    };
    let subnqn = field("subnqn").unwrap_or_else(|| SUBNQN.to_owned());
    Ok(TcpTarget {
        port,
        discovery_port,
        subnqn,
        name,
        run_dir,
        stopped: false,
    })
}

/// `BDEV_VM_TIMEOUT_SECS`, else `default`.
fn timeout(default: Duration) -> Duration {
    std::env::var("BDEV_VM_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(default, Duration::from_secs)
}

/// Runs `bash scripts/vm/boot.sh ARGS` with stdout and stderr in `log` (never a
/// pipe: the guest and its watcher outlive the script), killing it after `limit`.
fn run_script(args: &[&str], log: &Path, limit: Duration) -> Result<ExitStatus, String> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("duplicating {}: {e}", log.display()))?;
    let script = scripts_dir().join("boot.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("running bash {}: {e}", script.display()))?;
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if t0.elapsed() < limit => thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "boot.sh {} timed out after {} s",
                    args.join(" "),
                    limit.as_secs()
                ));
            }
            Err(e) => {
                let _ = child.kill();
                return Err(format!("waiting for boot.sh {}: {e}", args.join(" ")));
            }
        }
    }
}

/// The last `n` lines of a text file (lossy UTF-8), or a note why there are none.
fn tail(path: &Path, n: usize) -> String {
    let mut buf = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut buf)) {
        Ok(_) => {
            let text = String::from_utf8_lossy(&buf);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Are we root? (Effective uid 0, from `/proc/self/status`.)
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

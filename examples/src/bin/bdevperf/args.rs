//! Command line, with SPDK bdevperf's flags, checked into a [`Params`].

use std::path::PathBuf;

use bdev_core::app::CpuMask;
use clap::Parser;

/// The workloads bdevperf knows (`-w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    Rw,
    RandRw,
    Verify,
    Reset,
    Unmap,
    Flush,
    WriteZeroes,
}

const WORKLOADS: &str =
    "(read, write, randread, randwrite, rw, randrw, verify, reset, unmap, flush, write_zeroes)";

impl Workload {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            "verify" => Workload::Verify,
            "reset" => Workload::Reset,
            "unmap" => Workload::Unmap,
            "flush" => Workload::Flush,
            "write_zeroes" => Workload::WriteZeroes,
            _ => {
                return Err(format!(
                    "unknown workload '{s}': -w must be one of {WORKLOADS}"
                ));
            }
        })
    }

    /// Reads and writes only (of a buffer each, no verify).
    pub fn is_read_write(self) -> bool {
        matches!(
            self,
            Workload::Read
                | Workload::Write
                | Workload::RandRead
                | Workload::RandWrite
                | Workload::Rw
                | Workload::RandRw
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
            Workload::Verify => "verify",
            Workload::Reset => "reset",
            Workload::Unmap => "unmap",
            Workload::Flush => "flush",
            Workload::WriteZeroes => "write_zeroes",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw
        )
    }

    pub fn is_mixed(self) -> bool {
        matches!(self, Workload::Rw | Workload::RandRw)
    }

    pub fn is_verify(self) -> bool {
        matches!(self, Workload::Verify | Workload::Reset)
    }

    /// Percentage of reads for the plain read/write workloads.
    fn read_pct(self, m: Option<u32>) -> u32 {
        match self {
            Workload::Read | Workload::RandRead => 100,
            Workload::Rw | Workload::RandRw => m.unwrap_or(50),
            _ => 0,
        }
    }
}

/// `-o`: bytes, with an optional k/m/g suffix (powers of 1024), as `spdk_parse_capacity`.
fn parse_capacity(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!("Invalid IO size: {s}"));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("Invalid IO size: {s}"))?;
    let mult = match t[digits..].chars().next() {
        None => 1,
        Some('k' | 'K') => 1 << 10,
        Some('m' | 'M') => 1 << 20,
        Some('g' | 'G') => 1 << 30,
        Some(_) => return Err(format!("Invalid IO size: {s}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("Invalid IO size: {s}"))
}

#[derive(Parser, Debug)]
#[command(
    name = "bdevperf",
    about = "Benchmark bdevs with SPDK bdevperf's workloads, flags and report",
    after_help = "With no -c/--json, the stack is one 128 MiB malloc bdev, Malloc0, with 4 KiB blocks.\n\
                  Unlike SPDK, every core of -m gets a job per bdev (SPDK's -C), each on its own slice of the bdev."
)]
struct Cli {
    /// I/O depth per job
    #[arg(short = 'q', value_name = "depth")]
    queue_depth: Option<u32>,
    /// I/O size in bytes (k, m, g suffixes allowed)
    #[arg(short = 'o', value_name = "size", value_parser = parse_capacity)]
    io_size: Option<u64>,
    /// Workload: read, write, randread, randwrite, rw, randrw, verify, reset, unmap, flush, write_zeroes
    #[arg(short = 'w', value_name = "type")]
    workload: Option<String>,
    /// Percentage of reads for rw and randrw
    #[arg(short = 'M', value_name = "pct")]
    rw_mix_read: Option<u32>,
    /// Run time in seconds
    #[arg(short = 't', value_name = "sec")]
    time: Option<u64>,
    /// Core mask (0x3) or list ([0,1]) of reactors
    #[arg(
        short = 'm',
        long = "cpumask",
        value_name = "mask",
        default_value = "0x1"
    )]
    cpumask: String,
    /// SPDK JSON config that creates the bdevs
    #[arg(
        short = 'c',
        long = "json",
        visible_alias = "config",
        value_name = "file"
    )]
    config: Option<PathBuf>,
    /// Run only against this bdev
    #[arg(short = 'T', value_name = "bdev")]
    target: Option<String>,
    /// Print the table every this many seconds
    #[arg(short = 'S', value_name = "sec")]
    show_period: Option<u64>,
    /// Each core gets a job per bdev (the default here; accepted for SPDK compatibility)
    #[arg(short = 'C')]
    per_core: bool,
    /// Continue after I/O failures
    #[arg(short = 'f')]
    continue_on_failure: bool,
    /// Submit I/O through the async (future) API instead of callbacks
    #[arg(long = "async")]
    async_api: bool,
    /// With the async API, one task per job keeping the whole queue depth in flight in an
    /// IoSet (completions taken as they come, latency counted until the task takes
    /// them), instead of a task per slot awaiting each I/O; verify and reset still run a
    /// task per slot
    #[arg(long = "async-set")]
    async_set: bool,
    /// Wait for the perform_tests RPC (SPDK's bdevperf.py) instead of running at once
    #[arg(short = 'z')]
    wait_for_rpc: bool,
    /// JSON-RPC socket for -z
    #[arg(
        short = 'r',
        long = "rpc-socket",
        value_name = "path",
        default_value = "/var/tmp/spdk.sock"
    )]
    rpc_socket: PathBuf,
    /// Draw the run's latency histogram into this SVG file
    #[arg(long = "plot", value_name = "file.svg")]
    plot: Option<PathBuf>,
    /// Reactors sleep when idle instead of polling (SPDK's --interrupt-mode)
    #[arg(long = "interrupt-mode")]
    interrupt_mode: bool,
}

/// The longest run accepted (a year), so that microsecond arithmetic can't overflow.
pub const MAX_TIME_S: u64 = 365 * 24 * 3600;

/// The deepest queue a job takes (a task and its buffers each).
pub const MAX_QUEUE_DEPTH: u32 = 65536;

/// Checked parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub queue_depth: u32,
    pub io_size: u64,
    pub workload: Workload,
    pub read_pct: u32,
    pub time_s: u64,
    pub cores: CpuMask,
    pub config: Option<PathBuf>,
    pub target: Option<String>,
    pub show_period_s: Option<u64>,
    pub continue_on_failure: bool,
    pub async_api: bool,
    pub async_set: bool,
    pub wait_for_rpc: bool,
    pub rpc_socket: PathBuf,
    pub plot: Option<PathBuf>,
    pub interrupt_mode: bool,
}

impl Params {
    /// These parameters with `perform_tests`' overrides (bdevperf.py's names:
    /// queue_depth, time_in_sec, workload_type, io_size as a string or number,
    /// rw_percentage), checked as the command line is.
    pub fn with_rpc_params(&self, v: Option<&serde_json::Value>) -> Result<Params, String> {
        let mut p = self.clone();
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(p);
        };
        let o = v
            .as_object()
            .ok_or("perform_tests params must be an object")?;
        let mut mix = None;
        for (k, x) in o {
            let num = || {
                x.as_u64()
                    .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
                    .ok_or(format!("{k} must be a non-negative integer"))
            };
            match k.as_str() {
                "queue_depth" => {
                    p.queue_depth = u32::try_from(num()?).map_err(|_| "queue_depth too large")?;
                    if p.queue_depth == 0 || p.queue_depth > MAX_QUEUE_DEPTH {
                        return Err(format!("queue_depth must be 1 to {MAX_QUEUE_DEPTH}"));
                    }
                }
                "time_in_sec" => {
                    p.time_s = num()?;
                    if p.time_s == 0 || p.time_s > MAX_TIME_S {
                        return Err(format!("time_in_sec must be 1 to {MAX_TIME_S}"));
                    }
                }
                "workload_type" => {
                    p.workload =
                        Workload::parse(x.as_str().ok_or("workload_type must be a string")?)?;
                }
                "io_size" => {
                    p.io_size = match x {
                        serde_json::Value::String(s) => parse_capacity(s)?,
                        _ => num()?,
                    };
                    if p.io_size == 0 || p.io_size > u32::MAX as u64 {
                        return Err(format!("io_size {} out of range", p.io_size));
                    }
                }
                "rw_percentage" => {
                    let m = num()?;
                    if m > 100 {
                        return Err("rw_percentage must be 0 to 100".into());
                    }
                    mix = Some(m as u32);
                }
                other => return Err(format!("unknown perform_tests parameter {other}")),
            }
        }
        if p.workload.is_mixed() && mix.is_none() && !self.workload.is_mixed() {
            return Err("rw_percentage must be given for rw or randrw".into());
        }
        p.read_pct = p.workload.read_pct(mix.or(Some(self.read_pct)));
        Ok(p)
    }
}

/// What parsing decided: run, or print and exit.
pub enum Parsed {
    Run(Params),
    /// Help or version text, exit 0.
    Info(String),
}

/// Parses and checks the command line; errors are one line.
pub fn parse() -> Result<Parsed, String> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                return Ok(Parsed::Info(e.to_string()));
            }
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            return Err(first.trim_start_matches("error: ").to_string());
        }
    };
    let queue_depth = cli.queue_depth.ok_or("missing -q (queue depth)")?;
    if queue_depth == 0 || queue_depth > MAX_QUEUE_DEPTH {
        return Err(format!("queue depth (-q) must be 1 to {MAX_QUEUE_DEPTH}"));
    }
    let io_size = cli.io_size.ok_or("missing -o (I/O size)")?;
    if io_size == 0 || io_size > u32::MAX as u64 {
        return Err(format!("I/O size (-o) {io_size} out of range"));
    }
    let workload = Workload::parse(cli.workload.as_deref().ok_or("missing -w (workload)")?)?;
    let time_s = cli.time.ok_or("missing -t (run time in seconds)")?;
    if time_s == 0 || time_s > MAX_TIME_S {
        return Err(format!("run time (-t) must be 1 to {MAX_TIME_S} seconds"));
    }
    if workload.is_mixed() {
        match cli.rw_mix_read {
            Some(m) if m <= 100 => {}
            _ => {
                return Err("-M must be specified to value from 0 to 100 for rw or randrw.".into());
            }
        }
    } else if cli.rw_mix_read.is_some() {
        eprintln!("Ignoring -M option... Please use -M option only when using rw or randrw.");
    }
    let cores: CpuMask = cli
        .cpumask
        .parse()
        .map_err(|e: bdev_core::Error| e.to_string())?;
    cores.check_available().map_err(|e| e.to_string())?;
    if cli.show_period.is_some_and(|s| s == 0 || s > MAX_TIME_S) {
        return Err(format!("-S must be 1 to {MAX_TIME_S} seconds"));
    }
    let _ = cli.per_core;
    Ok(Parsed::Run(Params {
        queue_depth,
        io_size,
        read_pct: workload.read_pct(cli.rw_mix_read),
        workload,
        time_s,
        cores,
        config: cli.config,
        target: cli.target,
        show_period_s: cli.show_period,
        continue_on_failure: cli.continue_on_failure,
        async_api: cli.async_api || cli.async_set,
        async_set: cli.async_set,
        wait_for_rpc: cli.wait_for_rpc,
        rpc_socket: cli.rpc_socket,
        plot: cli.plot,
        interrupt_mode: cli.interrupt_mode,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_suffixes() {
        assert_eq!(parse_capacity("4096"), Ok(4096));
        assert_eq!(parse_capacity("4k"), Ok(4096));
        assert_eq!(parse_capacity("128K"), Ok(128 << 10));
        assert_eq!(parse_capacity("1M"), Ok(1 << 20));
        assert!(parse_capacity("k").is_err());
        assert!(parse_capacity("4x").is_err());
        assert!(parse_capacity("99999999999999999999g").is_err());
    }
}

//! bdev_dd: SPDK's `spdk_dd` for this stack: copies between files and bdevs.
//!
//! `bdev_dd (--if FILE | --ib BDEV) (--of FILE | --ob BDEV) [--bs BYTES] [--qd N]
//! [--count N] [--skip N] [--seek N] [--json CONFIG]`
//!
//! `--count`, `--skip` (input) and `--seek` (output) count blocks of `--bs` bytes, as dd's.
//! Without `--count`, the copy runs to the end of the input. An output file is created if
//! missing and never truncated (spdk_dd's behaviour). Bdev offsets and lengths must be
//! whole blocks of the bdev. `--qd` copies run at once (each a read then a write). A copy
//! that lasts over a second prints a progress line.

use std::cell::Cell;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bdev_core::app::{self, AppOpts};
use bdev_core::bdev::{BdevChannel, Desc};
use bdev_core::config::{ConfigFile, Methods};
use bdev_core::dma::DmaBuf;
use bdev_core::thread;
use clap::Parser;

#[derive(Parser, Clone)]
#[command(
    name = "bdev_dd",
    about = "Copy between files and bdevs (SPDK's spdk_dd)"
)]
struct Cli {
    /// Input file
    #[arg(long = "if", value_name = "FILE", conflicts_with = "ib")]
    input_file: Option<PathBuf>,
    /// Input bdev
    #[arg(long = "ib", value_name = "BDEV")]
    ib: Option<String>,
    /// Output file
    #[arg(long = "of", value_name = "FILE", conflicts_with = "ob")]
    output_file: Option<PathBuf>,
    /// Output bdev
    #[arg(long = "ob", value_name = "BDEV")]
    ob: Option<String>,
    /// Bytes per copy
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    bs: u64,
    /// Copies in flight
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    qd: u64,
    /// Blocks of --bs to copy (default: to the end of the input)
    #[arg(long)]
    count: Option<u64>,
    /// Blocks of --bs to skip at the start of the input
    #[arg(long, default_value_t = 0)]
    skip: u64,
    /// Blocks of --bs to skip at the start of the output
    #[arg(long, default_value_t = 0)]
    seek: u64,
    /// SPDK JSON config that builds the bdevs
    #[arg(short = 'c', long = "json")]
    config: Option<PathBuf>,
}

/// One end of the copy.
enum End {
    File(FileEnd),
    Bdev {
        desc: Arc<Desc>,
        ch: BdevChannel,
        block_len: u64,
        size: u64,
    },
}

/// A file end: its reads and writes run on a helper OS thread of its own, in order, so
/// that the reactor (which also drives the bdev end: keep-alives, timeouts) never waits
/// on the file system.
struct FileEnd {
    file: Arc<std::fs::File>,
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl FileEnd {
    fn new(file: std::fs::File) -> Result<FileEnd, String> {
        let (jobs, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("bdev_dd-file".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| format!("file thread: {e}"))?;
        Ok(FileEnd {
            file: Arc::new(file),
            jobs,
        })
    }

    /// Runs `f` on the file's thread with the buffer; the buffer comes back with the
    /// result.
    async fn run(
        &self,
        buf: DmaBuf,
        f: impl FnOnce(&std::fs::File, &mut DmaBuf) -> std::io::Result<()> + Send + 'static,
    ) -> Result<DmaBuf, String> {
        let (tx, rx) = bdev_core::oneshot::channel();
        let file = self.file.clone();
        let job = Box::new(move || {
            let mut buf = buf;
            let r = f(&file, &mut buf);
            tx.send((buf, r));
        });
        self.jobs
            .send(job)
            .map_err(|_| "file thread gone".to_string())?;
        match rx.await {
            Some((buf, Ok(()))) => Ok(buf),
            Some((_, Err(e))) => Err(e.to_string()),
            None => Err("file thread gone".into()),
        }
    }
}

impl End {
    fn open_bdev(name: &str, write: bool) -> Result<End, String> {
        let desc = Desc::open(name, write, |_| {}).map_err(|e| format!("bdev {name}: {e}"))?;
        let ch = desc.get_io_channel().map_err(|e| e.to_string())?;
        let b = desc.bdev();
        Ok(End::Bdev {
            block_len: b.block_len() as u64,
            size: b.block_len() as u64 * b.num_blocks(),
            desc: Arc::new(desc),
            ch,
        })
    }

    /// Bytes available from `offset` on, for an input.
    fn size(&self) -> Result<u64, String> {
        match self {
            End::File(f) => f
                .file
                .metadata()
                .map(|m| m.len())
                .map_err(|e| e.to_string()),
            End::Bdev { size, .. } => Ok(*size),
        }
    }

    fn check(&self, what: &str, offset: u64, len: u64) -> Result<(), String> {
        if let End::Bdev { block_len, .. } = self {
            if offset % block_len != 0 || len % block_len != 0 {
                return Err(format!(
                    "{what}: offset {offset} and length {len} must be multiples of the bdev's block size {block_len}"
                ));
            }
        }
        Ok(())
    }

    async fn read(&self, buf: DmaBuf, offset: u64, len: u64) -> Result<DmaBuf, String> {
        match self {
            End::File(f) => f
                .run(buf, move |file, buf| {
                    file.read_exact_at(&mut buf[..len as usize], offset)
                })
                .await
                .map_err(|e| format!("reading input at {offset}: {e}")),
            End::Bdev {
                desc,
                ch,
                block_len,
                ..
            } => desc
                .read_blocks(ch, buf, offset / block_len, len / block_len)
                .await
                .map_err(|e| format!("reading input at {offset}: {}", e.status)),
        }
    }

    async fn write(&self, buf: DmaBuf, offset: u64, len: u64) -> Result<DmaBuf, String> {
        match self {
            End::File(f) => f
                .run(buf, move |file, buf| {
                    file.write_all_at(&buf[..len as usize], offset)
                })
                .await
                .map_err(|e| format!("writing output at {offset}: {e}")),
            End::Bdev {
                desc,
                ch,
                block_len,
                ..
            } => desc
                .write_blocks(ch, buf, offset / block_len, len / block_len)
                .await
                .map_err(|e| format!("writing output at {offset}: {}", e.status)),
        }
    }

    fn align(&self) -> usize {
        match self {
            End::File(_) => 4096,
            End::Bdev { desc, .. } => desc.bdev().buf_align().max(4096),
        }
    }
}

async fn dd(cli: Cli) -> Result<u64, String> {
    if let Some(path) = &cli.config {
        let mut m = Methods::new();
        bdev_examples::register_modules(&mut m)?;
        let c = ConfigFile::read(path).map_err(|e| e.to_string())?;
        let r = c.load(&m).await.map_err(|e| e.to_string());
        c.wipe();
        r?;
    }
    let input = match (&cli.input_file, &cli.ib) {
        (Some(f), None) => End::File(FileEnd::new(
            std::fs::File::open(f).map_err(|e| format!("input {}: {e}", f.display()))?,
        )?),
        (None, Some(b)) => End::open_bdev(b, false)?,
        _ => return Err("one of --if or --ib is required".into()),
    };
    let output = match (&cli.output_file, &cli.ob) {
        (Some(f), None) => End::File(FileEnd::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(f)
                .map_err(|e| format!("output {}: {e}", f.display()))?,
        )?),
        (None, Some(b)) => End::open_bdev(b, true)?,
        _ => return Err("one of --of or --ob is required".into()),
    };
    let bs = cli.bs;
    let in_start = cli.skip.checked_mul(bs).ok_or("--skip too large")?;
    let out_start = cli.seek.checked_mul(bs).ok_or("--seek too large")?;
    let avail = input.size()?.saturating_sub(in_start);
    let total = match cli.count {
        Some(c) => {
            let want = c.checked_mul(bs).ok_or("--count too large")?;
            if want > avail {
                return Err(format!(
                    "--count {c} asks for {want} bytes, the input has {avail} after --skip"
                ));
            }
            want
        }
        None => avail,
    };
    // Offsets past i64::MAX are no file's (and no bdev's).
    for (what, start) in [("input (--skip)", in_start), ("output (--seek)", out_start)] {
        if start.checked_add(total).is_none_or(|e| e > i64::MAX as u64) {
            return Err(format!(
                "{total} bytes at {what} offset {start}: beyond any file"
            ));
        }
    }
    if let End::Bdev { size, .. } = &output {
        if out_start.checked_add(total).is_none_or(|e| e > *size) {
            return Err(format!(
                "{total} bytes at output offset {out_start} do not fit the output bdev ({size} bytes)"
            ));
        }
    }
    input.check("input", in_start, total.min(bs))?;
    output.check("output", out_start, total.min(bs))?;
    if total % bs != 0 {
        // The tail is shorter than --bs: it must still be whole bdev blocks.
        input.check("input tail", in_start, total % bs)?;
        output.check("output tail", out_start, total % bs)?;
    }
    let chunks = total.div_ceil(bs);
    let align = input.align().max(output.align());
    let ends = Rc::new((input, output));
    let next = Rc::new(Cell::new(0u64));
    let copied = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cli.qd.min(chunks.max(1)) {
        let (ends, next, copied) = (ends.clone(), next.clone(), copied.clone());
        let mut buf = DmaBuf::new(bs as usize, align).map_err(|e| e.to_string())?;
        tasks.push(
            thread::spawn_local(async move {
                loop {
                    let i = next.get();
                    if i >= chunks {
                        return Ok::<(), String>(());
                    }
                    next.set(i + 1);
                    let len = bs.min(total - i * bs);
                    buf = ends.0.read(buf, in_start + i * bs, len).await?;
                    buf = ends.1.write(buf, out_start + i * bs, len).await?;
                    copied.set(copied.get() + len);
                }
            })
            .map_err(|e| e.to_string())?,
        );
    }
    let done = Rc::new(Cell::new(false));
    {
        let (copied, done) = (copied.clone(), done.clone());
        thread::spawn_local(async move {
            let mut ticks = 0u32;
            loop {
                if thread::sleep_us(100_000).await.is_err() || done.get() {
                    return;
                }
                ticks += 1;
                if ticks % 10 != 0 {
                    continue;
                }
                let mb = copied.get() >> 20;
                let rate = copied.get() as f64 / 1048576.0 / started.elapsed().as_secs_f64();
                eprint!("\rCopying: {mb}/{} [MB] ({rate:.0} MBps)", total >> 20);
            }
        })
        .map_err(|e| e.to_string())?;
    }
    let mut first_err = None;
    for t in tasks {
        if let Err(e) = t.await {
            first_err.get_or_insert(e);
        }
    }
    done.set(true);
    if started.elapsed().as_secs() >= 1 {
        let rate = copied.get() as f64 / 1048576.0 / started.elapsed().as_secs_f64();
        eprintln!(
            "\rCopying: {}/{} [MB] (average {rate:.0} MBps)",
            copied.get() >> 20,
            total >> 20
        );
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(copied.get()),
    }
}

fn main() {
    let cli = Cli::parse();
    let rc = app::start(AppOpts::default(), move || {
        let r = thread::spawn_local(async move {
            let rc = match dd(cli).await {
                Ok(n) => {
                    println!("bdev_dd: copied {n} bytes");
                    0
                }
                Err(e) => {
                    eprintln!("bdev_dd: {e}");
                    1
                }
            };
            let _ = app::stop(rc);
        });
        if r.is_err() {
            let _ = app::stop(1);
        }
    });
    std::process::exit(rc.unwrap_or_else(|e| {
        eprintln!("bdev_dd: {e}");
        1
    }));
}

//! hello_bdev: the smallest consumer, as SPDK's example of the same name. Opens a bdev,
//! writes "Hello World!" to its first block, reads it back and prints it.
//!
//! `hello_bdev [-c config.json] [-b bdev]`; with no config, a malloc bdev Malloc0 is
//! created.

use bdev_core::app::{self, AppOpts};
use bdev_core::bdev::Desc;
use bdev_core::config::{ConfigFile, Methods};
use bdev_core::dma::DmaBuf;
use bdev_core::thread;
use bdev_malloc::malloc::{self, MallocOpts};
use clap::Parser;

#[derive(Parser)]
#[command(name = "hello_bdev", about = "Write and read back a block of a bdev")]
struct Cli {
    /// SPDK JSON config
    #[arg(short = 'c', long = "json")]
    config: Option<std::path::PathBuf>,
    /// Bdev to use
    #[arg(short = 'b', default_value = "Malloc0")]
    bdev: String,
}

async fn hello(cli: Cli) -> Result<String, String> {
    match &cli.config {
        Some(path) => {
            let mut m = Methods::new();
            bdev_examples::register_modules(&mut m)?;
            ConfigFile::read(path)
                .map_err(|e| e.to_string())?
                .load(&m)
                .await
                .map_err(|e| e.to_string())?
        }
        None => {
            malloc::create(MallocOpts::new("Malloc0", 16384, 512)).map_err(|e| e.to_string())?;
        }
    }
    let desc = Desc::open(&cli.bdev, true, |_| {}).map_err(|e| e.to_string())?;
    let ch = desc.get_io_channel().map_err(|e| e.to_string())?;
    let bl = desc.bdev().block_len() as usize;
    let mut buf = DmaBuf::new(bl, desc.bdev().buf_align().max(512)).map_err(|e| e.to_string())?;
    buf[..12].copy_from_slice(b"Hello World!");
    let buf = desc
        .write_blocks(&ch, buf, 0, 1)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = buf;
    buf.fill(0);
    let buf = desc
        .read_blocks(&ch, buf, 0, 1)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn main() {
    let cli = Cli::parse();
    let rc = app::start(AppOpts::default(), move || {
        let r = thread::spawn_local(async move {
            let rc = match hello(cli).await {
                Ok(s) => {
                    println!("Read string from bdev : {s}");
                    0
                }
                Err(e) => {
                    eprintln!("hello_bdev: {e}");
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
        eprintln!("hello_bdev: {e}");
        1
    }));
}

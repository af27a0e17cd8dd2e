//! Opening the target: O_DIRECT, what kind of file it is, its block size and size, and a
//! clear error for each way it can be unusable.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::Error;

/// An opened target.
pub(crate) struct Target {
    pub(crate) file: File,
    pub(crate) block_len: u32,
    pub(crate) num_blocks: u64,
    pub(crate) blockdev: bool,
}

const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
pub(crate) const BLKDISCARD: libc::c_ulong = 0x1277;
pub(crate) const BLKZEROOUT: libc::c_ulong = 0x127f;

fn ioctl_u64(f: &File, req: libc::c_ulong) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: both requests write one integer (u64 for BLKGETSIZE64; int for BLKSSZGET,
    // which fits in the zeroed low bytes) into `v`, which outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req, &mut v) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// The size in bytes of a file or block device.
pub(crate) fn size_of(f: &File, blockdev: bool) -> std::io::Result<u64> {
    if blockdev {
        ioctl_u64(f, BLKGETSIZE64)
    } else {
        Ok(f.metadata()?.len())
    }
}

/// Opens `path` for O_DIRECT I/O with `block_size` (0: the device's, or 512 for a file).
pub(crate) fn open(path: &str, block_size: u32, readonly: bool) -> Result<Target, Error> {
    let err = |what: String| Error::InvalidOpts(format!("{path}: {what}"));
    let meta = std::fs::metadata(Path::new(path)).map_err(|e| err(e.to_string()))?;
    if meta.is_dir() {
        return Err(err("is a directory".into()));
    }
    let blockdev = meta.file_type().is_block_device();
    if !blockdev && !meta.is_file() {
        return Err(err("neither a regular file nor a block device".into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => err("the file system does not support O_DIRECT (tmpfs?)".into()),
            _ => err(e.to_string()),
        })?;
    let dev_block = if blockdev {
        ioctl_u64(&file, BLKSSZGET).map_err(|e| err(format!("BLKSSZGET: {e}")))? as u32
    } else {
        512
    };
    let block_len = if block_size == 0 {
        dev_block
    } else {
        block_size
    };
    if !block_len.is_power_of_two() || block_len < 512 {
        return Err(err(format!(
            "block size {block_len} is not a power of two of at least 512"
        )));
    }
    if block_len < dev_block {
        return Err(err(format!(
            "block size {block_len} is below the device's logical block size {dev_block}"
        )));
    }
    let size = size_of(&file, blockdev).map_err(|e| err(e.to_string()))?;
    if size == 0 {
        return Err(err("is empty".into()));
    }
    if size % block_len as u64 != 0 {
        return Err(err(format!(
            "size {size} is not a multiple of the block size {block_len}"
        )));
    }
    // A file system may need more alignment than asked: try one O_DIRECT read.
    if !blockdev {
        let mut buf = bdev_core::dma::DmaBuf::new(block_len as usize, block_len as usize)
            .map_err(|e| err(e.to_string()))?;
        // SAFETY: the buffer holds block_len bytes, owned here for the call.
        let r = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                block_len as usize,
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EINVAL) {
                err(format!(
                    "block size {block_len} is below what O_DIRECT needs on this file system"
                ))
            } else {
                err(format!("reading: {e}"))
            });
        }
    }
    Ok(Target {
        file,
        block_len,
        num_blocks: size / block_len as u64,
        blockdev,
    })
}

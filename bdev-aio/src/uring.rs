//! The io_uring engine (the io-uring crate): one ring per channel. Submissions are batched
//! per poll; completions are read from the completion ring in user space, no syscall per
//! I/O. Options: SQPOLL (a kernel thread submits; no syscall at all while it is awake) and
//! a registered file.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};

use crate::engine::{Engine, Op};

/// An io_uring ring over one file.
pub struct Uring {
    ring: IoUring,
    file: Arc<File>,
    fixed: bool,
    queued: usize,
    inflight: usize,
}

impl Uring {
    /// A ring of `entries` entries on `file`; `sqpoll` (idle ms, CPU) starts an SQPOLL
    /// thread, `fixed_file` registers the file with the ring.
    pub fn new(
        file: Arc<File>,
        entries: u32,
        sqpoll: Option<(u32, Option<u32>)>,
        fixed_file: bool,
    ) -> io::Result<Uring> {
        let entries = entries.next_power_of_two().max(8);
        let build = |coop: bool| {
            let mut b = IoUring::builder();
            if let Some((idle, cpu)) = sqpoll {
                b.setup_sqpoll(idle);
                if let Some(cpu) = cpu {
                    b.setup_sqpoll_cpu(cpu);
                }
            }
            if coop && sqpoll.is_none() {
                // One thread submits and reaps: completions need no interrupt of it; the
                // kernel flags pending work, which the next poll's enter runs (5.19+).
                b.setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .setup_single_issuer();
            }
            b.build(entries)
        };
        let ring = build(true).or_else(|_| build(false))?;
        if fixed_file {
            ring.submitter().register_files(&[file.as_raw_fd()])?;
        }
        Ok(Uring {
            ring,
            file,
            fixed: fixed_file,
            queued: 0,
            inflight: 0,
        })
    }

    fn entry(&self, op: Op) -> squeue::Entry {
        macro_rules! with_fd {
            ($e:expr) => {
                if self.fixed {
                    $e(types::Fixed(0))
                } else {
                    $e(types::Fd(self.file.as_raw_fd()))
                }
            };
        }
        match op {
            Op::Readv { iov, cnt, offset } => {
                with_fd!(|fd| opcode::Readv::new(fd, iov, cnt).offset(offset).build())
            }
            Op::Writev { iov, cnt, offset } => {
                with_fd!(|fd| opcode::Writev::new(fd, iov, cnt).offset(offset).build())
            }
            Op::Fsync => with_fd!(|fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
        }
    }
}

impl Engine for Uring {
    unsafe fn push(&mut self, op: Op, user_data: u64) -> io::Result<()> {
        let e = self.entry(op).user_data(user_data);
        // SAFETY: the caller keeps the op's segments valid until it is reaped (this
        // function's contract); the entry names nothing else.
        let r = unsafe { self.ring.submission().push(&e) };
        match r {
            Ok(()) => {
                self.queued += 1;
                self.inflight += 1;
                Ok(())
            }
            Err(_) => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
        }
    }

    fn submit(&mut self) -> io::Result<usize> {
        if self.queued == 0 {
            // Completions waiting for this thread to enter the kernel (COOP_TASKRUN).
            if self.inflight > 0 && self.ring.submission().taskrun() {
                self.ring.submit()?;
            }
            return Ok(0);
        }
        let n = self.ring.submit()?;
        self.queued = self.queued.saturating_sub(n);
        Ok(n)
    }

    fn reap(&mut self, f: &mut dyn FnMut(u64, i64)) -> usize {
        let mut n = 0;
        for c in self.ring.completion() {
            f(c.user_data(), c.result() as i64);
            n += 1;
        }
        self.inflight -= n.min(self.inflight);
        n
    }

    fn wait_one(&mut self) -> io::Result<()> {
        if self.inflight == 0 {
            return Ok(());
        }
        self.ring.submit_and_wait(1).map(|_| ())
    }

    fn in_flight(&self) -> usize {
        self.inflight
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

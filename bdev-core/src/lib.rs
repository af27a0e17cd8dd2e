//! bdev-core: the runtime and the bdev model of a user-space block-device stack built in
//! the model of SPDK's bdev layer.
//!
//! - [`thread`]: lightweight threads with pollers, messages, io_devices and channels, and
//!   a local async executor; [`app`]: reactors pinned to the cores of a mask, and the
//!   application's start and orderly stop; [`testing`]: a deterministic harness that polls
//!   several threads on one OS thread.
//! - [`bdev`]: bdevs, descriptors, channels and I/O, for consumers and module authors.
//! - [`dma`]: I/O buffers; [`config`]: SPDK-format JSON configs.
//!
//! Composing a stack from code:
//!
//! ```no_run
//! use std::rc::Rc;
//! use bdev_core::{app, bdev::Desc, dma::DmaBuf};
//! let rc = app::start(app::AppOpts::default(), || {
//!     // A module crate's create() registers a bdev named "Malloc0" here.
//!     let desc = Rc::new(Desc::open("Malloc0", true, |_event| {}).unwrap());
//!     let ch = Rc::new(desc.get_io_channel().unwrap());
//!     let buf = DmaBuf::page_aligned(4096).unwrap();
//!     let keep = (desc.clone(), ch.clone());
//!     desc.write_blocks(&ch, buf, 0, 8).submit(move |c| {
//!         println!("write: {}", c.status);
//!         drop(keep); // close the descriptor and put the channel
//!         app::stop(0).unwrap();
//!     });
//! });
//! ```

#[cfg(not(target_pointer_width = "64"))]
compile_error!("bdev-core needs a 64-bit target (waker data and block arithmetic)");

pub mod app;
pub mod bdev;
pub mod config;
pub mod dma;
mod error;
pub mod module;
pub mod oneshot;
mod runtime;
pub mod testing;
pub mod thread;
pub mod vbdev;

pub use error::{Error, Result};

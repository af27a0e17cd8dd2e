//! The crate's error type. Errno values appear only through [`Error::errno`], for the
//! JSON-RPC edge.

/// Everything that can go wrong in bdev-core, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call needs a bdev-core lightweight thread, and none is current on this OS thread.
    #[error("{op}: not called from a bdev-core thread")]
    NoThread {
        /// The operation that was attempted.
        op: &'static str,
    },
    /// The target thread has exited; the message was dropped.
    #[error("thread {name}: exited, message not delivered")]
    ThreadExited {
        /// Name of the thread.
        name: String,
    },
    /// More lightweight threads are alive than the waker encoding can address.
    #[error("too many threads alive (limit {limit})")]
    TooManyThreads {
        /// The limit.
        limit: usize,
    },
    /// A core mask could not be parsed or names cores this machine lacks.
    #[error("invalid core mask '{mask}': {reason}")]
    InvalidCoreMask {
        /// The mask as given.
        mask: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An OS call made while starting reactors failed.
    #[error("reactor on core {core}: {op}: {source}")]
    Reactor {
        /// Core of the reactor.
        core: u32,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime is stopping; no new threads can be created.
    #[error("runtime is stopping")]
    Stopping,
    /// An io_device is being unregistered; no new channels.
    #[error("io_device {name}: being unregistered")]
    DeviceUnregistering {
        /// Name of the device.
        name: String,
    },
    /// A channel's create callback failed.
    #[error("io_device {name}: creating channel: {source}")]
    ChannelCreate {
        /// Name of the device.
        name: String,
        /// What the create callback said.
        #[source]
        source: Box<Error>,
    },
    /// No bdev with this name or alias.
    #[error("bdev {name}: not found")]
    NoSuchBdev {
        /// The name looked up.
        name: String,
    },
    /// The name or alias is taken.
    #[error("bdev name {name} already exists")]
    BdevExists {
        /// The name.
        name: String,
    },
    /// A bdev's properties are inconsistent.
    #[error("bdev {name}: {what}")]
    InvalidBdev {
        /// Bdev name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The bdev is claimed by a module, so it can't be opened for writing or claimed again.
    #[error("bdev {name}: already claimed by module {module}")]
    Claimed {
        /// Bdev name.
        name: String,
        /// The module holding the claim.
        module: String,
    },
    /// The bdev is being unregistered.
    #[error("bdev {name}: being removed")]
    BdevRemoving {
        /// Bdev name.
        name: String,
    },
    /// The operation can't run while descriptors are open.
    #[error("bdev {name}: {op}: {open} descriptor(s) open")]
    BdevBusy {
        /// Bdev name.
        name: String,
        /// The refused operation.
        op: &'static str,
        /// Open descriptors.
        open: usize,
    },
    /// A parameter is out of its valid range.
    #[error("invalid {what}: {reason}")]
    InvalidParam {
        /// The parameter.
        what: String,
        /// Why it is refused.
        reason: String,
    },
    /// A method's params could not be decoded: a key missing, unknown or of the wrong
    /// type (SPDK's `spdk_json_decode_object` failure). The JSON-RPC edge answers with the
    /// code and message SPDK gives for that method.
    #[error("invalid params of {method}: {reason}")]
    Decode {
        /// The method.
        method: String,
        /// What is wrong, from the decoder.
        reason: String,
    },
    /// Memory could not be allocated.
    #[error("allocating {len} bytes aligned to {align}: out of memory")]
    NoMem {
        /// Bytes asked for.
        len: usize,
        /// Alignment asked for.
        align: usize,
    },
    /// A JSON config could not be loaded.
    #[error("{0}")]
    Config(String),
    /// A module's error as the JSON-RPC edge should show it: SPDK's code (a negative
    /// errno) and message.
    #[error("{message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i32,
        /// The message.
        message: String,
    },
}

impl Error {
    /// The negative errno SPDK returns for the same condition (for the JSON-RPC edge).
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoThread { .. } => -libc::ENOTSUP,
            Error::ThreadExited { .. } => -libc::EIO,
            Error::TooManyThreads { .. } => -libc::ENOMEM,
            Error::InvalidCoreMask { .. } => -libc::EINVAL,
            Error::Reactor { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
            Error::Stopping => -libc::ESHUTDOWN,
            Error::DeviceUnregistering { .. } => -libc::ENODEV,
            Error::ChannelCreate { source, .. } => source.errno(),
            Error::NoSuchBdev { .. } => -libc::ENODEV,
            Error::BdevExists { .. } => -libc::EEXIST,
            Error::InvalidBdev { .. } => -libc::EINVAL,
            Error::Claimed { .. } => -libc::EPERM,
            Error::BdevRemoving { .. } => -libc::ENODEV,
            Error::BdevBusy { .. } => -libc::EBUSY,
            Error::InvalidParam { .. } => -libc::EINVAL,
            Error::Decode { .. } => -libc::EINVAL,
            Error::NoMem { .. } => -libc::ENOMEM,
            Error::Config(_) => -libc::EINVAL,
            Error::Rpc { code, .. } => *code,
        }
    }

    /// Shorthand for [`Error::InvalidParam`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

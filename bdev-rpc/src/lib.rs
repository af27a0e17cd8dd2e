//! The JSON-RPC 2.0 server of `bdevd`, with SPDK's wire behaviour so that SPDK's
//! `scripts/rpc.py` can drive it: a Unix socket (default `/var/tmp/spdk.sock`), requests as
//! JSON objects back to back on a stream, SPDK's error codes, method errors reported with
//! the negative errno as their code, as `spdk_jsonrpc_send_error_response` does.
//!
//! ```text
//!  client ──► UnixListener (non-blocking) ── poller every 1 ms on the app thread
//!               │ read what is there, parse every complete request (max 1 MiB)
//!               ▼
//!            Methods::call(name, params)  (async: runs as a task on the app thread)
//!               │ response written back in the order it completes
//! ```
//!
//! No thread per connection and no blocking call: the server is a poller like any other.

mod decode;
mod server;

pub use decode::decode_error;
pub use server::{RpcServer, rpc_error};

/// JSON-RPC error codes SPDK uses.
pub mod codes {
    /// The request is not valid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a valid JSON-RPC request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// The params are wrong.
    pub const INVALID_PARAMS: i32 = -32602;
    /// The method failed in an unexpected way.
    pub const INTERNAL_ERROR: i32 = -32603;
}

//! The NVMe/TCP transport: PDUs ([`pdu`]); the connection and queue pair come next.

pub mod pdu;

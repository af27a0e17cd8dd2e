//! The NVMe/TCP transport: PDUs ([`pdu`]) and queue pairs ([`qpair`]).

pub mod pdu;
pub mod qpair;

pub use qpair::TcpQpair;

//! The NVMe driver: wire structures ([`spec`]), transports (NVMe/TCP first: [`tcp`]; PCIe
//! over VFIO and RDMA follow, behind the same transport trait), the controller state
//! machine and the bdev glue (one bdev per namespace), as DESIGN.md lays out.
//!
//! This first step carries the wire layer: the specification's structures with
//! compile-time size checks and offset tests, and the NVMe/TCP PDU encoder and parser
//! (the parser is what faces the network: it never panics, and it is fuzzed).

pub mod ctrlr;
pub mod spec;
pub mod tcp;
pub mod transport;

//! The NVMe/TCP PDU parser on arbitrary bytes, with every digest setting and receive
//! buffer size: it must return a PDU, ask for more bytes, or refuse, never panic.
//!
//! `cargo +nightly fuzz run pdu_parse` (from bdev-nvme/).
#![no_main]

use bdev_nvme::tcp::pdu::{Digests, Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, bytes)) = input.split_first() else {
        return;
    };
    let dg = Digests::from_bits(ctl & 3);
    let max_data = [0u32, 512, 4096, 131072, u32::MAX][(ctl >> 2) as usize % 5];
    if let Ok(Parsed::Pdu { len, .. }) = parse(bytes, dg, max_data) {
        assert!(len <= bytes.len());
    }
});

//! The raw throughput of the AES-XTS the crypto bdev uses (our XTS over RustCrypto's
//! `aes`), on 4 KiB sectors, one core: the bound the crypto bdev's 4 KiB reads and writes
//! are measured against (docs/benchmarks.md, with `openssl speed -evp aes-128-xts`
//! beside it); and the `xts-mode` crate's, one block at a time, for comparison.
//!
//! `cargo bench -p bdev-crypto --bench xts`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use bdev_crypto::keys::Xts;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xts_mode::{Xts128, get_tweak_default};

fn xts(c: &mut Criterion) {
    let mut g = c.benchmark_group("aes_xts_4k");
    g.throughput(Throughput::Bytes(4096));
    let mut buf = vec![0x5au8; 4096];
    let x128 = Xts128::new(
        Aes128::new_from_slice(&[1u8; 16]).unwrap(),
        Aes128::new_from_slice(&[2u8; 16]).unwrap(),
    );
    let x256 = Xts128::new(
        Aes256::new_from_slice(&[1u8; 32]).unwrap(),
        Aes256::new_from_slice(&[2u8; 32]).unwrap(),
    );
    let ours = Xts::new(
        Aes128::new_from_slice(&[1u8; 16]).unwrap(),
        Aes128::new_from_slice(&[2u8; 16]).unwrap(),
    );
    let mut n = 0u64;
    g.bench_function("ours_encrypt_aes128", |b| {
        b.iter(|| {
            n += 1;
            ours.encrypt_sector(&mut buf, n);
        })
    });
    g.bench_function("ours_decrypt_aes128", |b| {
        b.iter(|| {
            n += 1;
            ours.decrypt_sector(&mut buf, n);
        })
    });
    let mut lba = 0u128;
    g.bench_function("xts_mode_encrypt_aes128", |b| {
        b.iter(|| {
            lba += 1;
            x128.encrypt_sector(&mut buf, get_tweak_default(lba));
        })
    });
    g.bench_function("xts_mode_decrypt_aes128", |b| {
        b.iter(|| {
            lba += 1;
            x128.decrypt_sector(&mut buf, get_tweak_default(lba));
        })
    });
    g.bench_function("xts_mode_encrypt_aes256", |b| {
        b.iter(|| {
            lba += 1;
            x256.encrypt_sector(&mut buf, get_tweak_default(lba));
        })
    });
    g.finish();
}

criterion_group!(benches, xts);
criterion_main!(benches);

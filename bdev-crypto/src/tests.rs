//! Keys and crypto bdevs over malloc, on the deterministic harness.

use std::rc::Rc;

use aes::Aes128;
use aes::cipher::KeyInit;
use bdev_core::bdev::{Desc, get_by_name};
use bdev_core::config::{ConfigFile, Methods, save_config};
use bdev_core::dma::DmaBuf;
use bdev_core::testing::Harness;
use serde_json::{Value, json};
use xts_mode::{Xts128, get_tweak_default};

const K1: &str = "00112233445566778899aabbccddeeff";
const K2: &str = "ffeeddccbbaa99887766554433221100";

fn harness() -> (Harness, Rc<Methods>) {
    let h = Harness::new(1);
    let m = h.run_on(0, || {
        let mut m = Methods::new();
        bdev_malloc::register(&mut m).unwrap();
        bdev_vbdev::register(&mut m).unwrap();
        crate::register(&mut m).unwrap();
        m
    });
    (h, Rc::new(m))
}

fn call(h: &Harness, m: &Rc<Methods>, method: &str, params: Value) -> Result<Value, String> {
    let (m, method) = (m.clone(), method.to_string());
    h.block_on(0, async move {
        m.call(&method, Some(params))
            .await
            .map_err(|e| format!("{e} (code {})", e.errno()))
    })
}

fn pattern(len: usize, seed: u8) -> DmaBuf {
    let mut b = DmaBuf::page_aligned(len).unwrap();
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(7).wrapping_add(seed);
    }
    b
}

fn setup(h: &Harness, m: &Rc<Methods>, cipher: &str) {
    call(
        h,
        m,
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 1024, "block_size": 512}),
    )
    .unwrap();
    let mut k = json!({"name": "k0", "cipher": cipher, "key": K1});
    if cipher == "AES_XTS" {
        k["key2"] = json!(K2);
    }
    call(h, m, "accel_crypto_key_create", k).unwrap();
    let r = call(
        h,
        m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "M0", "name": "C0", "key_name": "k0"}),
    )
    .unwrap();
    assert_eq!(r, json!("C0"));
}

fn read(h: &Harness, name: &str, lba: u64, n: u64) -> DmaBuf {
    let name = name.to_string();
    h.block_on(0, async move {
        let d = Desc::open(&name, false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.read_blocks(&ch, DmaBuf::page_aligned(n as usize * 512).unwrap(), lba, n)
            .await
            .unwrap()
    })
}

#[test]
fn xts_encrypts_each_block_with_its_lba_and_reads_back_plaintext() {
    let (h, m) = harness();
    setup(&h, &m, "AES_XTS");
    let plain = pattern(8192, 3);
    let written = h.block_on(0, async {
        let d = Desc::open("C0", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.write_blocks(&ch, pattern(8192, 3), 100, 16)
            .await
            .unwrap()
    });
    assert_eq!(&written[..], &plain[..], "the caller's buffer is untouched");
    assert_eq!(&read(&h, "C0", 100, 16)[..], &plain[..]);
    // The base holds ciphertext: block i is AES-128-XTS of plaintext block i, tweak = LBA.
    let cipher = read(&h, "M0", 100, 16);
    assert_ne!(&cipher[..], &plain[..]);
    let xts = Xts128::new(
        Aes128::new_from_slice(&hex::decode(K1).unwrap()).unwrap(),
        Aes128::new_from_slice(&hex::decode(K2).unwrap()).unwrap(),
    );
    for i in 0..16 {
        let mut b = plain[i * 512..(i + 1) * 512].to_vec();
        xts.encrypt_sector(&mut b, get_tweak_default(100 + i as u128));
        assert_eq!(&cipher[i * 512..(i + 1) * 512], &b[..], "block {i}");
    }
    // A read whose buffers split blocks.
    let back = h.block_on(0, async {
        let d = Desc::open("C0", false, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        let bufs = vec![
            DmaBuf::new(700, 4).unwrap(),
            DmaBuf::new(2048 - 700, 4).unwrap(),
        ];
        d.readv_blocks(&ch, bufs, 100, 4).await.unwrap()
    });
    let joined: Vec<u8> = back.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(&joined[..], &plain[..2048]);
}

#[test]
fn cbc_uses_the_lba_as_iv() {
    let (h, m) = harness();
    setup(&h, &m, "AES_CBC");
    h.block_on(0, async {
        let d = Desc::open("C0", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.write_blocks(&ch, pattern(1024, 9), 7, 2).await.unwrap();
    });
    assert_eq!(&read(&h, "C0", 7, 2)[..], &pattern(1024, 9)[..]);
    let c = read(&h, "M0", 7, 2);
    // First 16 bytes: AES(key, P0 ^ IV) with IV = 7 as 128-bit little endian.
    let aes = Aes128::new_from_slice(&hex::decode(K1).unwrap()).unwrap();
    let mut b = [0u8; 16];
    b.copy_from_slice(&pattern(1024, 9)[..16]);
    b[0] ^= 7;
    use aes::cipher::BlockEncrypt;
    aes.encrypt_block((&mut b).into());
    assert_eq!(&c[..16], &b[..]);
}

#[test]
fn bad_keys_and_requests_get_clear_errors() {
    let (h, m) = harness();
    call(
        &h,
        &m,
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 64, "block_size": 512}),
    )
    .unwrap();
    let cases = [
        (
            json!({"name": "a", "cipher": "AES_XTS", "key": "0011", "key2": "2233"}),
            "16 (AES-128-XTS) or 32",
        ),
        (
            json!({"name": "a", "cipher": "AES_GCM", "key": K1}),
            "unknown cipher",
        ),
        (
            json!({"name": "a", "cipher": "AES_XTS", "key": K1}),
            "AES_XTS needs key2",
        ),
        (
            json!({"name": "a", "cipher": "AES_XTS", "key": K1, "key2": K1}),
            "must differ",
        ),
        (
            json!({"name": "a", "cipher": "AES_XTS", "key": K1, "key2": "00"}),
            "same length",
        ),
        (
            json!({"name": "a", "cipher": "AES_XTS", "key": "zz", "key2": "00"}),
            "not a hex string",
        ),
        (
            json!({"name": "a", "cipher": "AES_CBC", "key": K1, "key2": K2}),
            "takes no key2",
        ),
        (
            json!({"name": "a", "cipher": "AES_XTS", "key": K1, "key2": K2, "tweak_mode": "INCR_512_FULL_LBA"}),
            "not supported",
        ),
    ];
    for (p, msg) in cases {
        let e = call(&h, &m, "accel_crypto_key_create", p.clone()).unwrap_err();
        assert!(e.contains(msg) && e.contains("code -22"), "{p}: {e}");
        // Nothing is echoed back.
        assert!(!e.contains(K1) && !e.contains(K2), "{e}");
    }
    call(
        &h,
        &m,
        "accel_crypto_key_create",
        json!({"name": "k", "cipher": "AES_XTS", "key": K1, "key2": K2}),
    )
    .unwrap();
    let e = call(
        &h,
        &m,
        "accel_crypto_key_create",
        json!({"name": "k", "cipher": "AES_XTS", "key": K1, "key2": K2}),
    )
    .unwrap_err();
    assert!(
        e.contains("already exists") && e.contains("code -17"),
        "{e}"
    );
    let e = call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "M0", "name": "C", "key_name": "nokey"}),
    )
    .unwrap_err();
    assert!(e.contains("Key was not found"), "{e}");
    call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "M0", "name": "P"}),
    )
    .unwrap();
    let e = call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "M0", "name": "C", "key_name": "k"}),
    )
    .unwrap_err();
    assert!(e.contains("already claimed"), "{e}");
    h.run_on(0, || assert!(get_by_name("C").is_none()));
    // Keys are listed without their material; a key in use can't be destroyed.
    call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "P", "name": "C", "key_name": "k"}),
    )
    .unwrap();
    let list = call(&h, &m, "accel_crypto_keys_get", json!({})).unwrap();
    assert_eq!(
        list,
        json!([{"name": "k", "cipher": "AES_XTS", "tweak_mode": "SIMPLE_LBA"}])
    );
    let e = call(&h, &m, "accel_crypto_key_destroy", json!({"key_name": "k"})).unwrap_err();
    assert!(e.contains("in use") && e.contains("code -16"), "{e}");
    call(&h, &m, "bdev_crypto_delete", json!({"name": "C"})).unwrap();
    // Nor while a crypto bdev waiting for its base names it: a new key under the same
    // name would come back over the old data.
    call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "Later", "name": "W", "key_name": "k"}),
    )
    .unwrap();
    let e = call(&h, &m, "accel_crypto_key_destroy", json!({"key_name": "k"})).unwrap_err();
    assert!(e.contains("in use") && e.contains("code -16"), "{e}");
    call(&h, &m, "bdev_crypto_delete", json!({"name": "W"})).unwrap();
    call(&h, &m, "accel_crypto_key_destroy", json!({"key_name": "k"})).unwrap();
    let e = call(&h, &m, "accel_crypto_key_destroy", json!({"key_name": "k"})).unwrap_err();
    assert!(
        e.contains("No key object found") && e.contains("code -32602"),
        "{e}"
    );
    let e = call(&h, &m, "accel_crypto_keys_get", json!({"key_name": "k"})).unwrap_err();
    assert!(
        e.contains("key was not found") && e.contains("code -32602"),
        "{e}"
    );
}

#[test]
fn save_config_writes_keys_in_accel_and_reloads_the_same_stack() {
    let (h, m) = harness();
    setup(&h, &m, "AES_XTS");
    h.block_on(0, async {
        let d = Desc::open("C0", true, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        d.write_blocks(&ch, pattern(512, 1), 0, 1).await.unwrap();
    });
    let saved = h.block_on(0, async { save_config() });
    let subs = saved["subsystems"].as_array().unwrap();
    assert_eq!(subs[0]["subsystem"], "accel", "{saved}");
    assert_eq!(subs[0]["config"][0]["params"]["key2"], K2);
    assert!(subs[1]["config"].to_string().contains("bdev_crypto_create"));
    // A fresh application loads it (malloc content is lost, but the stack is the same).
    let (h2, m2) = harness();
    let text = saved.to_string();
    let m3 = m2.clone();
    h2.block_on(0, async move {
        ConfigFile::parse(&text).unwrap().load(&m3).await.unwrap();
    });
    h2.run_on(0, || {
        assert_eq!(get_by_name("C0").unwrap().claimed_by(), None);
        assert_eq!(
            get_by_name("M0").unwrap().claimed_by().as_deref(),
            Some("crypto")
        );
    });
}

#[test]
fn the_legacy_form_makes_a_key_the_bdev_owns() {
    let (h, m) = harness();
    call(
        &h,
        &m,
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 1024, "block_size": 512}),
    )
    .unwrap();
    // As rpc.py bdev_crypto_create M0 CL -p crypto_aesni_mb -k .. -c AES_XTS -k2 .. sends it.
    let r = call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "M0", "name": "CL", "crypto_pmd": "crypto_aesni_mb",
            "key": K1, "cipher": "AES_XTS", "key2": K2}),
    )
    .unwrap();
    assert_eq!(r, json!("CL"));
    let keys = |h: &Harness| call(h, &m, "accel_crypto_keys_get", json!({})).unwrap();
    assert_eq!(keys(&h)[0]["name"], "CL_AES_XTS", "{}", keys(&h));
    // The bdev's key goes with it.
    call(&h, &m, "bdev_crypto_delete", json!({"name": "CL"})).unwrap();
    assert_eq!(keys(&h), json!([]));
    // No key material: SPDK's "No key was found"; a bad key leaves no key behind, nor
    // does a bdev that can't be made (its base is claimed).
    let e = call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "M0", "name": "CL"}),
    )
    .unwrap_err();
    assert!(e.contains("No key was found"), "{e}");
    call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "M0", "name": "CL", "key": "00ff", "cipher": "AES_XTS", "key2": K2}),
    )
    .unwrap_err();
    call(
        &h,
        &m,
        "bdev_passthru_create",
        json!({"base_bdev_name": "M0", "name": "P"}),
    )
    .unwrap();
    let e = call(
        &h,
        &m,
        "bdev_crypto_create",
        json!({"base_bdev_name": "M0", "name": "CL", "key": K1, "cipher": "AES_XTS", "key2": K2}),
    )
    .unwrap_err();
    assert!(e.contains("already claimed"), "{e}");
    assert_eq!(keys(&h), json!([]));
}

//! The crypto bdev against an independent AES implementation (Python's `cryptography`,
//! over OpenSSL), through bdev_dd and AIO files; bdevperf verify through crypto over
//! malloc and over raid0; bdev_dd's refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn dir() -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("crypto-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A Python with `cryptography`, installing Debian's package if need be; None (the test
/// skips) when there is none and it can't be installed.
fn python() -> Option<String> {
    let works = |py: &str| {
        Command::new(py)
            .args(["-c", "import cryptography"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for py in ["python3", "/usr/bin/python3"] {
        if works(py) {
            return Some(py.into());
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test_deps.sh");
    let _ = Command::new(script).arg("python3-cryptography").status();
    works("/usr/bin/python3").then(|| "/usr/bin/python3".into())
}

/// Encrypts or decrypts `input` into `output` block by block with Python's cryptography:
/// AES-XTS with key||key2 and the LBA (little-endian, 16 bytes) as tweak, or AES-CBC with
/// the LBA as IV.
#[allow(clippy::too_many_arguments)]
fn py_crypt(
    py: &str,
    encrypt: bool,
    cipher: &str,
    key: &str,
    key2: &str,
    bl: usize,
    input: &Path,
    output: &Path,
) {
    let prog = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
enc, cipher, key, key2, bl, src, dst = sys.argv[1] == "1", sys.argv[2], bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
data = open(src, "rb").read()
out = bytearray()
for i in range(len(data) // bl):
    t = i.to_bytes(16, "little")
    if cipher == "AES_XTS":
        c = Cipher(algorithms.AES(key + key2), modes.XTS(t))
    else:
        c = Cipher(algorithms.AES(key), modes.CBC(t))
    x = c.encryptor() if enc else c.decryptor()
    out += x.update(data[i * bl:(i + 1) * bl]) + x.finalize()
open(dst, "wb").write(out)
"#;
    let st = Command::new(py)
        .args([
            "-c",
            prog,
            if encrypt { "1" } else { "0" },
            cipher,
            key,
            key2,
        ])
        .arg(bl.to_string())
        .arg(input)
        .arg(output)
        .status()
        .unwrap();
    assert!(st.success());
}

fn dd(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_bdev_dd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn config(name: &str, accel: Vec<Value>, bdev: Vec<Value>) -> PathBuf {
    let p = dir().join(name);
    let c = json!({"subsystems": [
        {"subsystem": "accel", "config": accel},
        {"subsystem": "bdev", "config": bdev}]});
    std::fs::write(&p, c.to_string()).unwrap();
    p
}

fn plaintext(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn ciphertext_matches_an_independent_implementation_both_ways() {
    let Some(py) = python() else {
        eprintln!(
            "SKIPPED: no Python with the cryptography package, and it could not be installed"
        );
        return;
    };
    let cases = [
        (
            "AES_XTS",
            "00112233445566778899aabbccddeeff",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            512u32,
        ),
        (
            "AES_XTS",
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "2b7e151628aed2a6abf7158809cf4f3c762e7160f38b4da56a784d9045190cfe",
            4096,
        ),
        ("AES_CBC", "2b7e151628aed2a6abf7158809cf4f3c", "", 4096),
    ];
    for (n, (cipher, key, key2, bl)) in cases.into_iter().enumerate() {
        let plain = dir().join(format!("plain{n}.bin"));
        std::fs::write(&plain, plaintext(1 << 20)).unwrap();
        // Ours: plaintext through the crypto bdev onto a file.
        let ours = dir().join(format!("ours{n}.img"));
        std::fs::File::create(&ours)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut k = json!({"name": "k", "cipher": cipher, "key": key});
        if !key2.is_empty() {
            k["key2"] = json!(key2);
        }
        let cfg = |img: &Path, tag: &str| {
            config(
                &format!("{tag}{n}.json"),
                vec![json!({"method": "accel_crypto_key_create", "params": k})],
                vec![
                    json!({"method": "bdev_aio_create", "params": {"name": "A", "filename": img, "block_size": bl}}),
                    json!({"method": "bdev_crypto_create", "params": {"base_bdev_name": "A", "name": "C", "key_name": "k"}}),
                ],
            )
        };
        let c = cfg(&ours, "enc");
        let (ok, out) = dd(&[
            "--if",
            plain.to_str().unwrap(),
            "--ob",
            "C",
            "--json",
            c.to_str().unwrap(),
            "--bs",
            "65536",
        ]);
        assert!(ok, "{out}");
        // Python's, from the same plaintext: the same bytes.
        let theirs = dir().join(format!("theirs{n}.img"));
        py_crypt(&py, true, cipher, key, key2, bl as usize, &plain, &theirs);
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let first = a
            .chunks(bl as usize)
            .zip(b.chunks(bl as usize))
            .position(|(x, y)| x != y);
        assert_eq!(first, None, "{cipher} {bl}: first differing block");
        // The other way: Python's ciphertext read back through the crypto bdev.
        let c = cfg(&theirs, "dec");
        let back = dir().join(format!("back{n}.bin"));
        let (ok, out) = dd(&[
            "--ib",
            "C",
            "--of",
            back.to_str().unwrap(),
            "--json",
            c.to_str().unwrap(),
            "--bs",
            "131072",
        ]);
        assert!(ok, "{out}");
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(&plain).unwrap(),
            "{cipher} {bl}: plaintext back"
        );
        // And Python decrypts ours.
        let dec = dir().join(format!("dec{n}.bin"));
        py_crypt(&py, false, cipher, key, key2, bl as usize, &ours, &dec);
        assert!(std::fs::read(&dec).unwrap() == std::fs::read(&plain).unwrap());
    }
}

#[test]
fn verify_through_crypto_on_malloc_and_on_raid0() {
    let key = json!({"method": "accel_crypto_key_create", "params": {"name": "k", "cipher": "AES_XTS",
        "key": "00112233445566778899aabbccddeeff", "key2": "ffeeddccbbaa99887766554433221100"}});
    let malloc = |n: &str| json!({"method": "bdev_malloc_create", "params": {"name": n, "num_blocks": 16384, "block_size": 4096}});
    let cfg = config(
        "verify.json",
        vec![key],
        vec![
            malloc("M0"),
            malloc("M1"),
            malloc("M2"),
            json!({"method": "bdev_raid_create", "params": {"name": "R0", "raid_level": "raid0", "strip_size_kb": 64, "base_bdevs": ["M1", "M2"]}}),
            json!({"method": "bdev_crypto_create", "params": {"base_bdev_name": "M0", "name": "CM", "key_name": "k"}}),
            json!({"method": "bdev_crypto_create", "params": {"base_bdev_name": "R0", "name": "CR", "key_name": "k"}}),
        ],
    );
    for io in ["4096", "131072"] {
        let o = Command::new(env!("CARGO_BIN_EXE_bdevperf"))
            .args([
                "-c",
                cfg.to_str().unwrap(),
                "-q",
                "32",
                "-o",
                io,
                "-w",
                "verify",
                "-t",
                "3",
            ])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let out =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{out}");
        assert!(
            out.contains("Job: CM ") && out.contains("Job: CR "),
            "{out}"
        );
        assert!(
            !out.contains("miscompare") && !out.contains("panicked"),
            "{out}"
        );
        let total = bdev_tests::cli::total(&out).unwrap_or_else(|| panic!("no Total: {out}"));
        assert_eq!(total.fails, 0.0, "{out}");
    }
}

#[test]
fn bdev_dd_refuses_bad_input_with_one_line() {
    let f = dir().join("small.bin");
    std::fs::write(&f, vec![7u8; 10000]).unwrap();
    let cfg = config(
        "dd.json",
        vec![],
        vec![
            json!({"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 64, "block_size": 512}}),
        ],
    );
    let c = cfg.to_str().unwrap();
    let fs = f.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--ob", "M", "--json", c], "one of --if or --ib"),
        (&["--if", fs, "--json", c], "one of --of or --ob"),
        (&["--if", fs, "--ob", "nope", "--json", c], "bdev nope"),
        (
            &[
                "--if", fs, "--ob", "M", "--json", c, "--bs", "1000", "--count", "2",
            ],
            "multiples of the bdev's block size",
        ),
        (
            &["--if", fs, "--ob", "M", "--json", c, "--count", "100"],
            "--count 100",
        ),
        (
            &[
                "--if", fs, "--ob", "M", "--json", c, "--bs", "512", "--seek", "60", "--count", "8",
            ],
            "do not fit",
        ),
    ];
    for (args, msg) in cases {
        let (ok, out) = dd(args);
        assert!(!ok && out.contains(msg), "{args:?}: {out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    // A tail that is whole blocks copies; one that is not is refused.
    let (ok, out) = dd(&["--if", fs, "--ob", "M", "--json", c, "--bs", "4096"]);
    assert!(!ok && out.contains("tail"), "{out}");
    let (ok, out) = dd(&[
        "--if", fs, "--ob", "M", "--json", c, "--bs", "4096", "--count", "2",
    ]);
    assert!(ok && out.contains("copied 8192 bytes"), "{out}");
}

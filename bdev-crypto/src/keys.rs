//! Crypto keys (SPDK's accel crypto keys): `accel_crypto_key_create`, `_destroy`,
//! `accel_crypto_keys_get`, and the cipher engine each key gives.
//!
//! Key material lives in [`Zeroizing`] buffers and in the AES key schedules (which the
//! `aes` crate wipes on drop): destroying a key, or the application stopping, clears it.
//! It is never logged and `accel_crypto_keys_get` never shows it; `save_config` writes it
//! (as SPDK does, so that a saved config recreates the encrypted bdevs), so a saved config
//! must be kept as secret as the keys. What serde_json held while parsing a request is
//! outside our reach.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes256, Block};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;

/// Ciphers (SPDK's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cipher {
    /// AES in XTS mode: two keys of 128 or 256 bits, the LBA as tweak.
    #[serde(rename = "AES_XTS")]
    AesXts,
    /// AES in CBC mode: one key of 128 or 256 bits, the LBA as IV.
    #[serde(rename = "AES_CBC")]
    AesCbc,
}

impl Cipher {
    /// SPDK's name.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::AesXts => "AES_XTS",
            Cipher::AesCbc => "AES_CBC",
        }
    }
}

/// Params of `accel_crypto_key_create` (SPDK's names; keys as hex strings).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyOpts {
    /// The key's name.
    pub name: String,
    /// The cipher: "AES_XTS" or "AES_CBC".
    pub cipher: String,
    /// The key, hex.
    pub key: Zeroizing<String>,
    /// The second key (XTS's tweak key), hex.
    #[serde(default)]
    pub key2: Option<Zeroizing<String>>,
    /// How the tweak is made from the LBA: only "SIMPLE_LBA" (the default).
    #[serde(default)]
    pub tweak_mode: Option<String>,
}

impl std::fmt::Debug for KeyOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        write!(f, "KeyOpts({}, {})", self.name, self.cipher)
    }
}

/// AES-XTS (IEEE 1619) over the `aes` crate's block cipher, for sectors of whole 16-byte
/// blocks. The mode only: the AES rounds are the crate's (AES-NI/VAES). Blocks go through
/// the cipher eight at a time, which lets AES-NI pipeline them: the `xts-mode` crate
/// ciphers one block at a time, four to five times slower on this machine.
pub struct Xts<C> {
    data: C,
    tweak: C,
}

/// Blocks ciphered at once.
const BATCH: usize = 8;

/// The tweak of the next block: multiplication by x in GF(2^128), little-endian.
#[inline(always)]
fn next_tweak(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

impl<C: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>> Xts<C> {
    /// A cipher from its data key and tweak key.
    pub fn new(data: C, tweak: C) -> Self {
        Xts { data, tweak }
    }

    fn first_tweak(&self, lba: u64) -> u128 {
        let mut t = Block::from(lba_tweak(lba));
        self.tweak.encrypt_block(&mut t);
        u128::from_le_bytes(t.into())
    }

    /// Runs `f` (encrypt or decrypt) over the sector's blocks, each XORed with its tweak
    /// before and after, `BATCH` at a time.
    #[inline(always)]
    fn run(&self, sector: &mut [u8], lba: u64, f: impl Fn(&C, &mut [Block])) {
        debug_assert!(sector.len() % 16 == 0);
        let mut t = self.first_tweak(lba);
        let mut tweaks = [0u128; BATCH];
        let mut blocks = [Block::default(); BATCH];
        for chunk in sector.chunks_mut(16 * BATCH) {
            let n = chunk.len() / 16;
            for i in 0..n {
                tweaks[i] = t;
                t = next_tweak(t);
                let mut b = [0u8; 16];
                b.copy_from_slice(&chunk[i * 16..i * 16 + 16]);
                blocks[i] = Block::from((u128::from_le_bytes(b) ^ tweaks[i]).to_le_bytes());
            }
            f(&self.data, &mut blocks[..n]);
            for i in 0..n {
                let mut b = [0u8; 16];
                b.copy_from_slice(&blocks[i]);
                let x = u128::from_le_bytes(b) ^ tweaks[i];
                chunk[i * 16..i * 16 + 16].copy_from_slice(&x.to_le_bytes());
            }
        }
    }

    /// Encrypts a sector (whole 16-byte blocks) in place; `lba` makes the tweak.
    pub fn encrypt_sector(&self, sector: &mut [u8], lba: u64) {
        self.run(sector, lba, |c, b| c.encrypt_blocks(b));
    }

    /// Decrypts a sector in place.
    pub fn decrypt_sector(&self, sector: &mut [u8], lba: u64) {
        self.run(sector, lba, |c, b| c.decrypt_blocks(b));
    }
}

/// The cipher of a key, keyed: encrypts and decrypts one logical block given its LBA.
pub enum Engine {
    /// AES-128-XTS (two 128-bit keys).
    Xts128(Box<Xts<Aes128>>),
    /// AES-256-XTS (two 256-bit keys).
    Xts256(Box<Xts<Aes256>>),
    /// AES-128-CBC.
    Cbc128(Box<Aes128>),
    /// AES-256-CBC.
    Cbc256(Box<Aes256>),
}

/// SPDK's SIMPLE_LBA tweak (and our CBC IV): the LBA as a 128-bit little-endian number.
#[inline]
fn lba_tweak(lba: u64) -> [u8; 16] {
    (lba as u128).to_le_bytes()
}

fn cbc_encrypt<C: BlockEncrypt>(c: &C, block: &mut [u8], iv: [u8; 16]) {
    let mut prev = iv;
    for chunk in block.chunks_exact_mut(16) {
        for (b, p) in chunk.iter_mut().zip(prev.iter()) {
            *b ^= p;
        }
        c.encrypt_block(GenericArray::from_mut_slice(chunk));
        prev.copy_from_slice(chunk);
    }
}

fn cbc_decrypt<C: BlockDecrypt>(c: &C, block: &mut [u8], iv: [u8; 16]) {
    let mut prev = iv;
    for chunk in block.chunks_exact_mut(16) {
        let mut cur = [0u8; 16];
        cur.copy_from_slice(chunk);
        c.decrypt_block(GenericArray::from_mut_slice(chunk));
        for (b, p) in chunk.iter_mut().zip(prev.iter()) {
            *b ^= p;
        }
        prev = cur;
    }
}

impl Engine {
    /// Encrypts one logical block (a multiple of 16 bytes) in place.
    #[inline]
    pub fn encrypt(&self, block: &mut [u8], lba: u64) {
        match self {
            Engine::Xts128(x) => x.encrypt_sector(block, lba),
            Engine::Xts256(x) => x.encrypt_sector(block, lba),
            Engine::Cbc128(c) => cbc_encrypt(&**c, block, lba_tweak(lba)),
            Engine::Cbc256(c) => cbc_encrypt(&**c, block, lba_tweak(lba)),
        }
    }

    /// Decrypts one logical block in place.
    #[inline]
    pub fn decrypt(&self, block: &mut [u8], lba: u64) {
        match self {
            Engine::Xts128(x) => x.decrypt_sector(block, lba),
            Engine::Xts256(x) => x.decrypt_sector(block, lba),
            Engine::Cbc128(c) => cbc_decrypt(&**c, block, lba_tweak(lba)),
            Engine::Cbc256(c) => cbc_decrypt(&**c, block, lba_tweak(lba)),
        }
    }

    /// Builds the engine of `cipher` from raw keys, checking their lengths.
    pub fn new(cipher: Cipher, key: &[u8], key2: Option<&[u8]>) -> Result<Engine, Error> {
        let bad = |m: String| Err(Error::InvalidKey(m));
        match (cipher, key2) {
            (Cipher::AesXts, None) => bad("AES_XTS needs key2".into()),
            (Cipher::AesXts, Some(k2)) => {
                if key.len() != k2.len() {
                    return bad(format!(
                        "key ({} bytes) and key2 ({} bytes) must have the same length",
                        key.len(),
                        k2.len()
                    ));
                }
                if key == k2 {
                    return bad("key and key2 must differ".into());
                }
                match key.len() {
                    16 => Ok(Engine::Xts128(Box::new(Xts::new(
                        Aes128::new_from_slice(key).map_err(|_| Error::InvalidKey("key".into()))?,
                        Aes128::new_from_slice(k2).map_err(|_| Error::InvalidKey("key2".into()))?,
                    )))),
                    32 => Ok(Engine::Xts256(Box::new(Xts::new(
                        Aes256::new_from_slice(key).map_err(|_| Error::InvalidKey("key".into()))?,
                        Aes256::new_from_slice(k2).map_err(|_| Error::InvalidKey("key2".into()))?,
                    )))),
                    n => bad(format!(
                        "AES_XTS key of {n} bytes: 16 (AES-128-XTS) or 32 (AES-256-XTS) expected"
                    )),
                }
            }
            (Cipher::AesCbc, Some(_)) => bad("AES_CBC takes no key2".into()),
            (Cipher::AesCbc, None) => match key.len() {
                16 => Ok(Engine::Cbc128(Box::new(
                    Aes128::new_from_slice(key).map_err(|_| Error::InvalidKey("key".into()))?,
                ))),
                32 => Ok(Engine::Cbc256(Box::new(
                    Aes256::new_from_slice(key).map_err(|_| Error::InvalidKey("key".into()))?,
                ))),
                n => bad(format!("AES_CBC key of {n} bytes: 16 or 32 expected")),
            },
        }
    }
}

/// A created key.
pub struct CryptoKey {
    /// Its name.
    pub name: String,
    /// Its cipher.
    pub cipher: Cipher,
    /// The keyed cipher.
    pub engine: Engine,
    /// The hex strings it was made from, kept for `save_config` only.
    key_hex: Zeroizing<String>,
    key2_hex: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CryptoKey({}, {})", self.name, self.cipher.name())
    }
}

fn unhex(what: &str, s: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut v = Zeroizing::new(vec![0u8; s.len() / 2]);
    if s.len() % 2 != 0 || hex::decode_to_slice(s, &mut v[..]).is_err() {
        return Err(Error::InvalidKey(format!(
            "{what} is not a hex string of whole bytes"
        )));
    }
    Ok(v)
}

impl CryptoKey {
    /// Checks `o` and keys the cipher.
    pub fn new(o: KeyOpts) -> Result<CryptoKey, Error> {
        if o.name.is_empty() {
            return Err(Error::InvalidKey("key name must not be empty".into()));
        }
        let cipher = match o.cipher.as_str() {
            "AES_XTS" => Cipher::AesXts,
            "AES_CBC" => Cipher::AesCbc,
            c => {
                return Err(Error::InvalidKey(format!(
                    "unknown cipher '{c}' (AES_XTS or AES_CBC)"
                )));
            }
        };
        match o.tweak_mode.as_deref() {
            None | Some("SIMPLE_LBA") => {}
            Some(m) => {
                return Err(Error::InvalidKey(format!(
                    "tweak_mode '{m}' not supported (SIMPLE_LBA)"
                )));
            }
        }
        let key = unhex("key", &o.key)?;
        let key2 = match &o.key2 {
            Some(k) => Some(unhex("key2", k)?),
            None => None,
        };
        let engine = Engine::new(cipher, &key, key2.as_deref().map(|k| &k[..]))?;
        Ok(CryptoKey {
            name: o.name,
            cipher,
            engine,
            key_hex: o.key,
            key2_hex: o.key2,
        })
    }

    /// What `accel_crypto_keys_get` shows: no key material.
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "cipher": self.cipher.name(),
            "tweak_mode": "SIMPLE_LBA",
        })
    }

    /// The `accel_crypto_key_create` entry that recreates it (with its key material).
    pub fn config_json(&self) -> serde_json::Value {
        let mut p = serde_json::json!({
            "name": self.name,
            "cipher": self.cipher.name(),
            "key": self.key_hex.as_str(),
            "tweak_mode": "SIMPLE_LBA",
        });
        if let Some(k2) = &self.key2_hex {
            p["key2"] = serde_json::Value::String(k2.to_string());
        }
        serde_json::json!({"method": "accel_crypto_key_create", "params": p})
    }
}

/// The keys of one application.
#[derive(Default)]
pub struct Keys(Mutex<BTreeMap<String, Arc<CryptoKey>>>);

impl Keys {
    /// The current application's.
    pub fn get() -> Result<Arc<Keys>, Error> {
        bdev_core::module::app_data::<Keys>().ok_or(Error::Core(bdev_core::Error::NoThread {
            op: "crypto keys",
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<CryptoKey>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `accel_crypto_key_create`.
    pub fn create(&self, o: KeyOpts) -> Result<(), Error> {
        if self.lock().contains_key(&o.name) {
            return Err(Error::KeyExists(o.name));
        }
        let k = CryptoKey::new(o)?;
        let mut l = self.lock();
        if l.contains_key(&k.name) {
            return Err(Error::KeyExists(k.name));
        }
        l.insert(k.name.clone(), Arc::new(k));
        Ok(())
    }

    /// A key by name.
    pub fn find(&self, name: &str) -> Result<Arc<CryptoKey>, Error> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoKey(name.to_string()))
    }

    /// `accel_crypto_key_destroy`: refused while a crypto bdev uses the key.
    pub fn destroy(&self, name: &str) -> Result<(), Error> {
        let mut l = self.lock();
        let k = l.get(name).ok_or_else(|| Error::NoKey(name.to_string()))?;
        // The map holds one reference: any other is a crypto bdev using the key.
        if Arc::strong_count(k) > 1 {
            return Err(Error::KeyInUse(name.to_string()));
        }
        l.remove(name);
        Ok(())
    }

    /// Every key, by name.
    pub fn all(&self) -> Vec<Arc<CryptoKey>> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xts_mode::{Xts128, get_tweak_default};

    #[test]
    fn our_xts_matches_the_xts_mode_crate() {
        let k = |b: u8, n: usize| {
            (0..n)
                .map(|i| b.wrapping_add((i as u8).wrapping_mul(17)))
                .collect::<Vec<u8>>()
        };
        for len in [16usize, 32, 144, 512, 4096, 8192] {
            for lba in [0u64, 1, 7, 1 << 40, u64::MAX] {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
                let ours = Xts::new(
                    Aes128::new_from_slice(&k(1, 16)).unwrap(),
                    Aes128::new_from_slice(&k(2, 16)).unwrap(),
                );
                let theirs = Xts128::new(
                    Aes128::new_from_slice(&k(1, 16)).unwrap(),
                    Aes128::new_from_slice(&k(2, 16)).unwrap(),
                );
                let (mut a, mut b) = (data.clone(), data.clone());
                ours.encrypt_sector(&mut a, lba);
                theirs.encrypt_sector(&mut b, get_tweak_default(lba as u128));
                assert_eq!(a, b, "aes128 len {len} lba {lba}");
                ours.decrypt_sector(&mut a, lba);
                assert_eq!(a, data);
                let ours = Xts::new(
                    Aes256::new_from_slice(&k(3, 32)).unwrap(),
                    Aes256::new_from_slice(&k(4, 32)).unwrap(),
                );
                let theirs = Xts128::new(
                    Aes256::new_from_slice(&k(3, 32)).unwrap(),
                    Aes256::new_from_slice(&k(4, 32)).unwrap(),
                );
                let (mut a, mut b) = (data.clone(), data.clone());
                ours.encrypt_sector(&mut a, lba);
                theirs.encrypt_sector(&mut b, get_tweak_default(lba as u128));
                assert_eq!(a, b, "aes256 len {len} lba {lba}");
            }
        }
    }
}

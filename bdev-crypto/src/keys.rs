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

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256};
use serde::{Deserialize, Serialize};
use xts_mode::{Xts128, get_tweak_default};
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

/// The cipher of a key, keyed: encrypts and decrypts one logical block given its LBA.
pub enum Engine {
    /// AES-128-XTS (two 128-bit keys).
    Xts128(Box<Xts128<Aes128>>),
    /// AES-256-XTS (two 256-bit keys).
    Xts256(Box<Xts128<Aes256>>),
    /// AES-128-CBC.
    Cbc128(Box<Aes128>),
    /// AES-256-CBC.
    Cbc256(Box<Aes256>),
}

/// SPDK's SIMPLE_LBA tweak (and our CBC IV): the LBA as a 128-bit little-endian number.
#[inline]
fn lba_tweak(lba: u64) -> [u8; 16] {
    get_tweak_default(lba as u128)
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
        let t = lba_tweak(lba);
        match self {
            Engine::Xts128(x) => x.encrypt_sector(block, t),
            Engine::Xts256(x) => x.encrypt_sector(block, t),
            Engine::Cbc128(c) => cbc_encrypt(&**c, block, t),
            Engine::Cbc256(c) => cbc_encrypt(&**c, block, t),
        }
    }

    /// Decrypts one logical block in place.
    #[inline]
    pub fn decrypt(&self, block: &mut [u8], lba: u64) {
        let t = lba_tweak(lba);
        match self {
            Engine::Xts128(x) => x.decrypt_sector(block, t),
            Engine::Xts256(x) => x.decrypt_sector(block, t),
            Engine::Cbc128(c) => cbc_decrypt(&**c, block, t),
            Engine::Cbc256(c) => cbc_decrypt(&**c, block, t),
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
                    16 => Ok(Engine::Xts128(Box::new(Xts128::new(
                        Aes128::new_from_slice(key).map_err(|_| Error::InvalidKey("key".into()))?,
                        Aes128::new_from_slice(k2).map_err(|_| Error::InvalidKey("key2".into()))?,
                    )))),
                    32 => Ok(Engine::Xts256(Box::new(Xts128::new(
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

//! Encryption: SPDK's accel crypto keys ([`keys`]) and the crypto bdev ([`crypto`]), with
//! SPDK's methods: `accel_crypto_key_create`, `accel_crypto_key_destroy`,
//! `accel_crypto_keys_get`, `bdev_crypto_create`, `bdev_crypto_delete`.
//!
//! AES-XTS (128- and 256-bit keys, key and key2) and AES-CBC, each logical block on its own,
//! with SPDK's SIMPLE_LBA tweak: the block's LBA as a 128-bit little-endian number (the IV
//! for CBC). The ciphertext on the base is what any AES-XTS implementation gives for the
//! same key and tweak (a test checks it against Python's `cryptography`).

pub mod crypto;
pub mod keys;

use std::sync::Arc;

use bdev_core::bdev::Bdev;
use bdev_core::config::{Methods, parse_params};
use bdev_core::module::BdevModule;
use serde::Deserialize;
use serde_json::Value;

/// What can go wrong with keys and crypto bdevs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key's parameters are wrong (length, cipher, key2...).
    #[error("{0}")]
    InvalidKey(String),
    /// A key of this name exists.
    #[error("key {0} already exists")]
    KeyExists(String),
    /// No key of this name.
    #[error("key {0} not found")]
    NoKey(String),
    /// The key is used by a crypto bdev.
    #[error("key {0} is in use by a crypto bdev")]
    KeyInUse(String),
    /// `bdev_crypto_create` named a key that does not exist (SPDK's message).
    #[error("Key was not found")]
    KeyNameNotFound,
    /// `bdev_crypto_create`'s legacy form without a key, and none of its name exists.
    #[error("No key was found")]
    NoKeyGiven,
    /// The bdev layer refused.
    #[error(transparent)]
    Core(#[from] bdev_core::Error),
}

impl From<Error> for bdev_core::Error {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidKey(_) => -libc::EINVAL,
            Error::KeyExists(_) => -libc::EEXIST,
            Error::NoKey(_) => -libc::ENOENT,
            Error::KeyInUse(_) => -libc::EBUSY,
            // SPDK's JSON-RPC codes for these two.
            Error::KeyNameNotFound => -32602,
            Error::NoKeyGiven => -32603,
            Error::Core(c) => c.errno(),
        };
        bdev_core::Error::Rpc {
            code,
            message: e.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyName {
    key_name: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeysGet {
    #[serde(default)]
    key_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// The crypto module.
#[derive(Debug, Default)]
pub struct CryptoModule;

impl BdevModule for CryptoModule {
    fn name(&self) -> &'static str {
        crypto::MODULE
    }

    fn register_methods(&self, m: &mut Methods) {
        m.register_sync("accel_crypto_key_create", |p| {
            let o: keys::KeyOpts = parse_params("accel_crypto_key_create", p)?;
            keys::Keys::get()?.create(o)?;
            Ok(Value::Bool(true))
        });
        m.register_sync("accel_crypto_key_destroy", |p| {
            let k: KeyName = parse_params("accel_crypto_key_destroy", p)?;
            // SPDK's code and text for a key that isn't there, checked first, as SPDK does.
            let no_key = || bdev_core::Error::Rpc {
                code: -32602,
                message: "No key object found".into(),
            };
            let keys = keys::Keys::get()?;
            if keys.find(&k.key_name).is_err() {
                return Err(no_key());
            }
            // A crypto bdev waiting for its base (configured, not built) still names the
            // key: destroyed, a new key of that name would come back under the old data.
            let named = bdev_core::vbdev::Configs::<crypto::CryptoOpts>::get()
                .map(|c| c.all().iter().any(|o| o.key_name == k.key_name))
                .unwrap_or(false);
            if named {
                return Err(Error::KeyInUse(k.key_name).into());
            }
            match keys.destroy(&k.key_name) {
                Ok(()) => Ok(Value::Bool(true)),
                Err(Error::NoKey(_)) => Err(no_key()),
                Err(e) => Err(e.into()),
            }
        });
        m.register_sync("accel_crypto_keys_get", |p| {
            let g: KeysGet = match p {
                None | Some(Value::Null) => KeysGet::default(),
                p => parse_params("accel_crypto_keys_get", p)?,
            };
            let keys = keys::Keys::get()?;
            let list = match g.key_name {
                Some(n) => match keys.find(&n) {
                    Ok(k) => vec![k.info()],
                    // SPDK's code and text.
                    Err(Error::NoKey(_)) => {
                        return Err(bdev_core::Error::Rpc {
                            code: -32602,
                            message: "key was not found".into(),
                        });
                    }
                    Err(e) => return Err(e.into()),
                },
                None => keys.all().iter().map(|k| k.info()).collect(),
            };
            Ok(Value::Array(list))
        });
        m.register_sync("bdev_crypto_create", |p| {
            let c: crypto::CreateParams = parse_params("bdev_crypto_create", p)?;
            Ok(Value::String(crypto::create_with(c)?))
        });
        m.register("bdev_crypto_delete", |p| {
            Box::pin(async move {
                let d: NameParams = parse_params("bdev_crypto_delete", p)?;
                crypto::delete(&d.name).await?;
                Ok(Value::Bool(true))
            })
        });
    }

    fn examine(&self, bdev: &Bdev) {
        crypto::examine(bdev);
    }

    fn accel_config_json(&self) -> Vec<Value> {
        keys::Keys::get()
            .map(|k| k.all().iter().map(|k| k.config_json()).collect())
            .unwrap_or_default()
    }
}

/// Adds the crypto module to the current application and its methods to `m`.
pub fn register(m: &mut Methods) -> bdev_core::Result<()> {
    m.add_module(Arc::new(CryptoModule))
}

#[cfg(test)]
mod tests;

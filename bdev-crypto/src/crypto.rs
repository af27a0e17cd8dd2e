//! The crypto bdev (SPDK's `bdev_crypto`): a virtual bdev over one base that encrypts what
//! is written and decrypts what is read, each logical block on its own with its LBA as
//! tweak (XTS) or IV (CBC), so the base holds only ciphertext.
//!
//! - **Writes** encrypt into a buffer from the channel's pool (size classes of powers of
//!   two, kept for reuse: no allocation in the steady state) and write that; the caller's
//!   buffer is never touched.
//! - **Reads** go down in place into the caller's buffers and are decrypted there when the
//!   base completes.
//! - **Unmap and flush** pass through. An unmapped range reads back as whatever the base
//!   returns, decrypted: not zeroes (SPDK's crypto bdev behaves the same).
//! - **write_zeroes** is not offered: the bdev layer emulates it with writes of zeroes,
//!   which are encrypted like any write, so zeroes read back as zeroes.
//! - **Reset** passes through.
//!
//! The crypto bdev claims its base and takes its geometry (the block size must be a
//! multiple of 16 bytes); its key stays in use (`accel_crypto_key_destroy` refuses) until
//! the bdev is gone.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bdev_core::bdev::{self, Bdev, BdevChannel, BdevIo, BdevOps, Desc, DestructDone, IoType};
use bdev_core::dma::BufPool;
use bdev_core::vbdev::{BaseLink, Configs, VbdevConfig};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::Error;
use crate::keys::{CryptoKey, Keys};

/// The module's name, which also names its claims.
pub const MODULE: &str = "crypto";

/// Options of `bdev_crypto_create` (SPDK's names).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CryptoOpts {
    /// The bdev to encrypt (it may not exist yet).
    pub base_bdev_name: String,
    /// The crypto bdev's name.
    pub name: String,
    /// The key (made with `accel_crypto_key_create`).
    pub key_name: String,
    /// Its UUID (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl VbdevConfig for CryptoOpts {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn base_name(&self) -> &str {
        &self.base_bdev_name
    }
}

/// One crypto bdev: what every thread shares.
struct Crypto {
    opts: CryptoOpts,
    key: Arc<CryptoKey>,
    base: Bdev,
    link: BaseLink,
}

/// A thread's channel.
pub(crate) struct Chan {
    desc: Arc<Desc>,
    base: BdevChannel,
    key: Arc<CryptoKey>,
    pool: BufPool,
    /// For reads whose segments split a block: the whole I/O, gathered.
    scratch: RefCell<Vec<u8>>,
}

impl BdevOps for Crypto {
    type Channel = Rc<Chan>;

    fn module_name(&self) -> &'static str {
        MODULE
    }

    fn create_channel(&self) -> bdev_core::Result<Rc<Chan>> {
        let (desc, base) = self.link.channel(&self.opts.name)?;
        Ok(Rc::new(Chan {
            desc,
            base,
            key: self.key.clone(),
            pool: BufPool::new(self.base.buf_align().max(4096)),
            scratch: RefCell::new(Vec::new()),
        }))
    }

    fn submit_request(&self, ch: &Rc<Chan>, io: BdevIo) {
        match io.io_type() {
            IoType::Read => {
                let c = ch.clone();
                io.forward(&ch.desc, &ch.base, move |status, mut io| {
                    if status.is_success() && !decrypt(&c, &mut io) {
                        // No memory to gather the blocks in: the layer tries again.
                        return io.complete(bdev_core::bdev::IoStatus::NoMem);
                    }
                    io.complete(status);
                });
            }
            IoType::Write => write(ch, io),
            _ => io.forward_and_complete(&ch.desc, &ch.base),
        }
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        match io_type {
            IoType::Read | IoType::Write | IoType::Reset => true,
            IoType::Unmap | IoType::Flush => self.base.io_type_supported(io_type),
            _ => false,
        }
    }

    fn destruct(&self, done: DestructDone) {
        self.link.close();
        done.complete();
    }

    fn write_config_json(&self, bdev: &Bdev) -> Option<serde_json::Value> {
        let mut opts = self.opts.clone();
        opts.uuid = Some(bdev.uuid());
        Some(serde_json::json!({"method": "bdev_crypto_create", "params": opts}))
    }

    fn dump_info_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"crypto": {
            "base_bdev_name": self.opts.base_bdev_name,
            "name": self.opts.name,
            "key_name": self.key.name,
            "cipher": self.key.cipher.name(),
        }}))
    }
}

/// Encrypts the I/O's data into a pool buffer and writes that to the base.
fn write(ch: &Rc<Chan>, io: BdevIo) {
    let (lba, n, bl) = (io.offset_blocks(), io.num_blocks(), io.block_len() as usize);
    let len = io.len_bytes() as usize;
    let mut buf = match ch.pool.take(len) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(bdev = %ch.desc.bdev().name(), "crypto write buffer: {e}");
            return io.complete(bdev_core::bdev::IoStatus::NoMem);
        }
    };
    let mut at = 0;
    io.for_each_segment(|s| {
        buf[at..at + s.len()].copy_from_slice(s);
        at += s.len();
    });
    for (i, block) in buf[..len].chunks_exact_mut(bl).enumerate() {
        ch.key.engine.encrypt(block, lba + i as u64);
    }
    let c = ch.clone();
    ch.desc
        .write_blocks(&ch.base, buf, lba, n)
        .submit(move |done| {
            c.pool.give(done.payload);
            io.complete(done.status);
        });
}

/// Gather space kept between reads whose blocks straddle segments; beyond it, the
/// space goes back after each such read.
const SCRATCH_KEEP: usize = 1 << 20;

/// Decrypts a completed read in the caller's buffers; false if there was no memory for it.
fn decrypt(ch: &Chan, io: &mut BdevIo) -> bool {
    let (lba, bl) = (io.offset_blocks(), io.block_len() as usize);
    if io.iovs().iter().all(|v| v.len() % bl == 0) {
        let mut next = lba;
        io.for_each_segment_mut(|s| {
            for block in s.chunks_exact_mut(bl) {
                ch.key.engine.decrypt(block, next);
                next += 1;
            }
        });
        return true;
    }
    // Blocks straddle segments: gather, decrypt, scatter.
    let mut scratch = ch.scratch.borrow_mut();
    scratch.clear();
    if scratch.try_reserve(io.len_bytes() as usize).is_err() {
        return false;
    }
    io.for_each_segment(|s| scratch.extend_from_slice(s));
    for (i, block) in scratch.chunks_exact_mut(bl).enumerate() {
        ch.key.engine.decrypt(block, lba + i as u64);
    }
    let mut at = 0;
    io.for_each_segment_mut(|s| {
        s.copy_from_slice(&scratch[at..at + s.len()]);
        at += s.len();
    });
    if scratch.capacity() > SCRATCH_KEEP {
        *scratch = Vec::new();
    }
    true
}

/// Opens and claims `base`, registers the crypto bdev on it.
fn build(opts: &CryptoOpts, base: &Bdev) -> Result<Bdev, Error> {
    let key = Keys::get().and_then(|k| k.find(&opts.key_name))?;
    if base.block_len() % 16 != 0 {
        return Err(Error::InvalidKey(format!(
            "base bdev {} has {}-byte blocks: a multiple of 16 is needed",
            base.name(),
            base.block_len()
        )));
    }
    let desc = bdev_core::vbdev::open_base(base, MODULE, &opts.name)?;
    let props = bdev_core::vbdev::props_like(base, &opts.name, "crypto", opts.uuid);
    let ops = Arc::new(Crypto {
        opts: opts.clone(),
        key,
        base: base.clone(),
        link: BaseLink::new(desc),
    });
    Ok(bdev::register(props, ops)?)
}

/// Creates a crypto bdev (`bdev_crypto_create`). The key must exist; the base may come
/// later (the bdev appears when it does).
pub fn create(opts: CryptoOpts) -> Result<String, Error> {
    Keys::get()?.find(&opts.key_name)?;
    Configs::<CryptoOpts>::get()?.create(opts, build)
}

/// `bdev_crypto_create`'s params as SPDK v24.09 decodes them: `key_name`, or the legacy
/// form (`key`, `cipher`, `key2`; `crypto_pmd` ignored) rpc.py still sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The bdev to encrypt.
    pub base_bdev_name: String,
    /// The crypto bdev's name.
    pub name: String,
    /// A key made with `accel_crypto_key_create`.
    #[serde(default)]
    pub key_name: Option<String>,
    /// Legacy, ignored (SPDK's DPDK driver name).
    #[serde(default)]
    pub crypto_pmd: Option<String>,
    /// Legacy: the key, hex.
    #[serde(default)]
    pub key: Option<Zeroizing<String>>,
    /// Legacy: the cipher (AES_CBC by default).
    #[serde(default)]
    pub cipher: Option<String>,
    /// Legacy: the second key, hex.
    #[serde(default)]
    pub key2: Option<Zeroizing<String>>,
    /// Its UUID (random when absent).
    #[serde(default)]
    pub uuid: Option<Uuid>,
}

/// Keys the legacy form created, by the crypto bdev that owns them.
#[derive(Default)]
struct OwnedKeys(std::sync::Mutex<std::collections::BTreeMap<String, String>>);

/// SPDK's default cipher for the legacy form.
const LEGACY_CIPHER: &str = "AES_CBC";

/// `bdev_crypto_create`, as SPDK's: a named key must exist; without one, the key is
/// `<name>_<cipher>`, found or made from `key`/`key2` and owned by the bdev (destroyed
/// with it by [`delete`], or at once if the bdev can't be made).
pub fn create_with(c: CreateParams) -> Result<String, Error> {
    let opts = |key_name: String| CryptoOpts {
        base_bdev_name: c.base_bdev_name.clone(),
        name: c.name.clone(),
        key_name,
        uuid: c.uuid,
    };
    let ks = Keys::get()?;
    if let Some(k) = &c.key_name {
        ks.find(k).map_err(|_| Error::KeyNameNotFound)?;
        return create(opts(k.clone()));
    }
    if c.crypto_pmd.is_some() {
        tracing::warn!("bdev_crypto_create: \"crypto_pmd\" parameters is obsolete and ignored");
    }
    let cipher = c.cipher.clone().unwrap_or_else(|| LEGACY_CIPHER.into());
    let key_name = format!("{}_{cipher}", c.name);
    let created = ks.find(&key_name).is_err();
    if created {
        let key = c.key.clone().ok_or(Error::NoKeyGiven)?;
        ks.create(crate::keys::KeyOpts {
            name: key_name.clone(),
            cipher,
            key,
            key2: c.key2.clone(),
            tweak_mode: None,
        })?;
    }
    let r = create(opts(key_name.clone()));
    match (&r, created) {
        (Ok(_), true) => {
            if let Some(o) = bdev_core::module::app_data::<OwnedKeys>() {
                o.0.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(c.name.clone(), key_name);
            }
        }
        (Err(_), true) => {
            let _ = ks.destroy(&key_name);
        }
        _ => {}
    }
    r
}

/// The examine hook: builds every configured crypto bdev waiting for `base`.
pub(crate) fn examine(base: &Bdev) {
    if let Ok(c) = Configs::<CryptoOpts>::get() {
        c.examine(base, build);
    }
}

/// Deletes a crypto bdev (`bdev_crypto_delete`).
/// A key the legacy form made for the bdev goes with it, as in SPDK.
pub async fn delete(name: &str) -> Result<(), Error> {
    Configs::<CryptoOpts>::get()?.delete(name, MODULE).await?;
    let owned = bdev_core::module::app_data::<OwnedKeys>()
        .and_then(|o| o.0.lock().unwrap_or_else(|e| e.into_inner()).remove(name));
    if let Some(k) = owned {
        if let Err(e) = Keys::get().and_then(|ks| ks.destroy(&k)) {
            tracing::warn!(key = %k, "bdev_crypto_delete: key kept: {e}");
        }
    }
    Ok(())
}

//! Properties a module gives its bdev at registration (the fields of SPDK's `spdk_bdev`).

use uuid::Uuid;

use crate::error::{Error, Result};

/// A bdev's static properties. Build with [`BdevProps::new`] and the setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BdevProps {
    /// Unique name.
    pub name: String,
    /// Other names it can be opened by.
    pub aliases: Vec<String>,
    /// Product name ("Malloc disk", "Null disk", ...).
    pub product_name: String,
    /// UUID; generated at registration when `None`.
    pub uuid: Option<Uuid>,
    /// Logical block size in bytes.
    pub block_len: u32,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Physical block size in bytes (0: same as `block_len`).
    pub phys_block_len: u32,
    /// Required buffer alignment in bytes (a power of two; 1 = none).
    pub buf_align: usize,
    /// Optimal I/O boundary in blocks (0: none).
    pub optimal_io_boundary: u32,
    /// Whether I/O crossing `optimal_io_boundary` must be split.
    pub split_on_optimal_io_boundary: bool,
    /// Write unit in blocks (writes are multiples of it).
    pub write_unit_size: u32,
    /// Largest segment in bytes (0: no limit).
    pub max_segment_size: u32,
    /// Most segments per I/O (0: no limit).
    pub max_num_segments: u32,
    /// Largest read/write in blocks (0: no limit); SPDK's `max_rw_size`.
    pub max_rw_size: u32,
    /// Largest write_zeroes in blocks (0: no limit); SPDK's `max_write_zeroes`. Larger
    /// ones are split, as reads and writes are.
    pub max_write_zeroes: u32,
    /// Whether the bdev has a volatile write cache (flush matters).
    pub write_cache: bool,
    /// Metadata bytes per block (0: none).
    pub md_len: u32,
}

impl BdevProps {
    /// Properties with the required values; everything else at SPDK's defaults.
    pub fn new(name: impl Into<String>, block_len: u32, num_blocks: u64) -> Self {
        BdevProps {
            name: name.into(),
            aliases: Vec::new(),
            product_name: String::new(),
            uuid: None,
            block_len,
            num_blocks,
            phys_block_len: 0,
            buf_align: 1,
            optimal_io_boundary: 0,
            split_on_optimal_io_boundary: false,
            write_unit_size: 1,
            max_segment_size: 0,
            max_num_segments: 0,
            max_rw_size: 0,
            max_write_zeroes: 0,
            write_cache: false,
            md_len: 0,
        }
    }

    /// Sets the product name.
    pub fn product_name(mut self, p: impl Into<String>) -> Self {
        self.product_name = p.into();
        self
    }

    /// Sets the UUID.
    pub fn uuid(mut self, u: Option<Uuid>) -> Self {
        self.uuid = u;
        self
    }

    /// Adds an alias.
    pub fn alias(mut self, a: impl Into<String>) -> Self {
        self.aliases.push(a.into());
        self
    }

    /// Sets the physical block size.
    pub fn phys_block_len(mut self, v: u32) -> Self {
        self.phys_block_len = v;
        self
    }

    /// Sets the required buffer alignment in bytes.
    pub fn buf_align(mut self, v: usize) -> Self {
        self.buf_align = v;
        self
    }

    /// Sets the optimal I/O boundary (blocks) and whether to split on it.
    pub fn optimal_io_boundary(mut self, blocks: u32, split: bool) -> Self {
        self.optimal_io_boundary = blocks;
        self.split_on_optimal_io_boundary = split && blocks > 0;
        self
    }

    /// Sets the write unit size in blocks.
    pub fn write_unit_size(mut self, v: u32) -> Self {
        self.write_unit_size = v;
        self
    }

    /// Sets the segment limits (bytes per segment, segments per I/O; 0 = none).
    pub fn segments(mut self, max_segment_size: u32, max_num_segments: u32) -> Self {
        self.max_segment_size = max_segment_size;
        self.max_num_segments = max_num_segments;
        self
    }

    /// Sets the largest read/write in blocks (0 = none).
    pub fn max_rw_size(mut self, v: u32) -> Self {
        self.max_rw_size = v;
        self
    }

    /// Sets the largest write_zeroes in blocks (0 = none).
    pub fn max_write_zeroes(mut self, v: u32) -> Self {
        self.max_write_zeroes = v;
        self
    }

    /// Sets whether the bdev has a volatile write cache.
    pub fn write_cache(mut self, v: bool) -> Self {
        self.write_cache = v;
        self
    }

    /// Checks consistency and fills defaults (as `bdev_register` does).
    pub(crate) fn validate(&mut self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::InvalidBdev {
                name: self.name.clone(),
                what,
            })
        };
        if self.name.is_empty() {
            return Err(Error::invalid("bdev name", "must not be empty"));
        }
        if self.block_len == 0 {
            return bad("block size must not be 0".into());
        }
        if self.num_blocks == 0 {
            return bad("must have at least one block".into());
        }
        if self.num_blocks.checked_mul(self.block_len as u64).is_none() {
            return bad("size in bytes overflows 64 bits".into());
        }
        if !self.buf_align.is_power_of_two() {
            return bad(format!(
                "required alignment {} is not a power of two",
                self.buf_align
            ));
        }
        if self.max_segment_size != 0
            && self.max_num_segments != 0
            && (self.max_segment_size as u64) * (self.max_num_segments as u64)
                < self.block_len as u64
        {
            return bad(format!(
                "{} segments of at most {} bytes can't hold one {}-byte block",
                self.max_num_segments, self.max_segment_size, self.block_len
            ));
        }
        if self.write_unit_size == 0 {
            self.write_unit_size = 1;
        }
        if self.phys_block_len == 0 {
            self.phys_block_len = self.block_len;
        }
        if self.uuid.is_none() {
            self.uuid = Some(Uuid::new_v4());
        }
        Ok(())
    }
}

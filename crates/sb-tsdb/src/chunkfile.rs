//! Sealed chunks on disk: numbered append-only files of checksummed chunk records. A chunk is
//! written once, referenced from the checkpoint by (file, offset), and read back with a
//! positioned read whose checksum is verified. Whole files are deleted by retention.
//!
//! Record: `series: u32, min_t: i64, max_t: i64, count: u16, len: u32, crc32(bytes): u32`
//! (all little-endian), then `len` bytes of chunk data.

use crate::chunk::Chunk;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const HEADER_LEN: usize = 30;

/// Where a sealed chunk lives on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskRef {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
    pub min_t: i64,
    pub max_t: i64,
    pub count: u16,
}

pub struct ChunkFiles {
    dir: PathBuf,
    file_bytes_max: u64,
    readers: BTreeMap<u32, File>,
    current: Option<(u32, File, u64)>,
    pending: Vec<u8>,
}

fn path_of(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:06}"))
}

impl ChunkFiles {
    pub fn open(dir: &Path, file_bytes_max: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut readers = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                readers.insert(n, File::open(e.path())?);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            file_bytes_max,
            readers,
            current: None,
            pending: Vec::new(),
        })
    }

    /// Queues a chunk for writing and says where it will be once [`ChunkFiles::flush`] returns.
    pub fn append(&mut self, series: u32, c: &Chunk) -> io::Result<DiskRef> {
        let need = (HEADER_LEN + c.bytes.len()) as u64;
        let full = self
            .current
            .as_ref()
            .is_none_or(|(_, _, size)| *size > 0 && *size + need > self.file_bytes_max);
        if full {
            self.flush()?;
            let n = self.readers.keys().next_back().map_or(1, |n| n + 1);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(path_of(&self.dir, n))?;
            self.readers.insert(n, File::open(path_of(&self.dir, n))?);
            self.current = Some((n, file, 0));
        }
        let Some((n, _, size)) = self.current.as_mut() else {
            return Err(io::Error::other("no chunk file open"));
        };
        let r = DiskRef {
            file: *n,
            offset: *size,
            len: c.bytes.len() as u32,
            min_t: c.min_t,
            max_t: c.max_t,
            count: c.count,
        };
        self.pending.extend_from_slice(&series.to_le_bytes());
        self.pending.extend_from_slice(&c.min_t.to_le_bytes());
        self.pending.extend_from_slice(&c.max_t.to_le_bytes());
        self.pending.extend_from_slice(&c.count.to_le_bytes());
        self.pending.extend_from_slice(&r.len.to_le_bytes());
        self.pending
            .extend_from_slice(&crc32fast::hash(&c.bytes).to_le_bytes());
        self.pending.extend_from_slice(&c.bytes);
        *size += need;
        Ok(r)
    }

    /// Writes what was appended and syncs it.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some((_, file, _)) = self.current.as_mut()
            && !self.pending.is_empty()
        {
            file.write_all(&self.pending)?;
            file.sync_data()?;
            self.pending.clear();
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads a chunk back, checking its checksum.
    pub fn read(&self, r: &DiskRef) -> io::Result<Chunk> {
        let f = self
            .readers
            .get(&r.file)
            .ok_or_else(|| io::Error::other(format!("chunk file {} is gone", r.file)))?;
        let mut buf = vec![0u8; HEADER_LEN + r.len as usize];
        f.read_exact_at(&mut buf, r.offset)?;
        let crc = u32::from_le_bytes([buf[26], buf[27], buf[28], buf[29]]);
        let len = u32::from_le_bytes([buf[22], buf[23], buf[24], buf[25]]);
        let bytes = buf.split_off(HEADER_LEN);
        if len != r.len || crc32fast::hash(&bytes) != crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunk at {}:{} fails its checksum", r.file, r.offset),
            ));
        }
        Ok(Chunk {
            bytes,
            count: r.count,
            min_t: r.min_t,
            max_t: r.max_t,
        })
    }

    /// File numbers and sizes, oldest first.
    pub fn files(&self) -> io::Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for &n in self.readers.keys() {
            out.push((n, std::fs::metadata(path_of(&self.dir, n))?.len()));
        }
        Ok(out)
    }

    /// Deletes a whole file (the caller has dropped every reference into it).
    pub fn remove(&mut self, n: u32) -> io::Result<()> {
        if self.current.as_ref().is_some_and(|(c, _, _)| *c == n) {
            self.flush()?;
            self.current = None;
        }
        self.readers.remove(&n);
        std::fs::remove_file(path_of(&self.dir, n))
    }

    pub fn current_file(&self) -> Option<u32> {
        self.current.as_ref().map(|(n, _, _)| *n)
    }
}

//! The checkpoint: the head as it stood when the log was rolled — every series, the disk
//! location of its sealed chunks, and its open chunk — plus the log segment replay starts from.
//! Written whole to a temporary file, synced, then renamed over the previous one.

use crate::chunkfile::DiskRef;
use crate::labels::Labels;
use crate::wal::{Cursor, put_uvarint, put_varint};
use std::io;
use std::path::Path;

const MAGIC: &[u8; 6] = b"SBCK01";
const FILE: &str = "checkpoint";

#[derive(Clone, Debug, PartialEq)]
pub struct SnapSeries {
    pub id: u32,
    pub labels: Labels,
    pub chunks: Vec<DiskRef>,
    /// The open chunk's bytes and sample count.
    pub open: Option<(Vec<u8>, u16)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Log segments from this one on hold what came after the checkpoint.
    pub wal_from: u64,
    pub series: Vec<SnapSeries>,
}

pub fn encode(s: &Snapshot) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    put_uvarint(&mut out, s.wal_from);
    put_uvarint(&mut out, s.series.len() as u64);
    for se in &s.series {
        put_uvarint(&mut out, u64::from(se.id));
        put_uvarint(&mut out, se.labels.len() as u64);
        for (n, v) in se.labels.iter() {
            put_uvarint(&mut out, n.len() as u64);
            out.extend_from_slice(n.as_bytes());
            put_uvarint(&mut out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
        }
        put_uvarint(&mut out, se.chunks.len() as u64);
        for c in &se.chunks {
            put_uvarint(&mut out, u64::from(c.file));
            put_uvarint(&mut out, c.offset);
            put_uvarint(&mut out, u64::from(c.len));
            put_varint(&mut out, c.min_t);
            put_varint(&mut out, c.max_t);
            put_uvarint(&mut out, u64::from(c.count));
        }
        match &se.open {
            Some((bytes, count)) => {
                put_uvarint(&mut out, u64::from(*count));
                put_uvarint(&mut out, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
            None => put_uvarint(&mut out, 0),
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode(b: &[u8]) -> Result<Snapshot, String> {
    if b.len() < MAGIC.len() + 4 || &b[..MAGIC.len()] != MAGIC {
        return Err("not a checkpoint file".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor {
        b: body,
        pos: MAGIC.len(),
    };
    let bad = || "malformed checkpoint".to_string();
    let wal_from = c.uvarint().ok_or_else(bad)?;
    let n = c.uvarint().ok_or_else(bad)?;
    let mut series = Vec::new();
    for _ in 0..n {
        let id = u32::try_from(c.uvarint().ok_or_else(bad)?).map_err(|_| bad())?;
        let nl = c.uvarint().ok_or_else(bad)?;
        let mut pairs = Vec::new();
        for _ in 0..nl {
            pairs.push((c.string().ok_or_else(bad)?, c.string().ok_or_else(bad)?));
        }
        let nc = c.uvarint().ok_or_else(bad)?;
        let mut chunks = Vec::new();
        for _ in 0..nc {
            chunks.push(DiskRef {
                file: u32::try_from(c.uvarint().ok_or_else(bad)?).map_err(|_| bad())?,
                offset: c.uvarint().ok_or_else(bad)?,
                len: u32::try_from(c.uvarint().ok_or_else(bad)?).map_err(|_| bad())?,
                min_t: c.varint().ok_or_else(bad)?,
                max_t: c.varint().ok_or_else(bad)?,
                count: u16::try_from(c.uvarint().ok_or_else(bad)?).map_err(|_| bad())?,
            });
        }
        let count = u16::try_from(c.uvarint().ok_or_else(bad)?).map_err(|_| bad())?;
        let open = if count > 0 {
            let len = usize::try_from(c.uvarint().ok_or_else(bad)?).map_err(|_| bad())?;
            Some((c.bytes(len).ok_or_else(bad)?.to_vec(), count))
        } else {
            None
        };
        series.push(SnapSeries {
            id,
            labels: Labels::new(pairs),
            chunks,
            open,
        });
    }
    if c.pos != body.len() {
        return Err(bad());
    }
    Ok(Snapshot { wal_from, series })
}

pub fn write(dir: &Path, s: &Snapshot) -> io::Result<u64> {
    let bytes = encode(s);
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(bytes.len() as u64)
}

/// The checkpoint in `dir`, if there is one; a damaged one is an error naming the file.
pub fn read(dir: &Path) -> io::Result<Option<Snapshot>> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(b) => decode(&b).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}; restore it from a backup, or move it aside to start from the log alone (older data is then lost)", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(FILE))
        .map(|m| m.len())
        .unwrap_or(0)
}

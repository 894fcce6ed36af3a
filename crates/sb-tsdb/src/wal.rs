//! The write-ahead log: numbered segment files of checksummed records. A sample is durable once
//! its record is written and the segment synced; on start the log is replayed into the head, and
//! a torn or corrupt tail is cut off and reported instead of stopping the start.
//!
//! Record: `type: u8, len: u32 LE, crc32(type ‖ payload): u32 LE, payload`.

use crate::labels::Labels;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const HEADER_LEN: usize = 9;
/// Largest record the log writes or reads (a bound for damaged length fields).
pub const RECORD_BYTES_MAX: usize = 64 << 20;
const SERIES: u8 = 1;
const SAMPLES: u8 = 2;

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A new series and the id its samples use.
    Series { id: u64, labels: Labels },
    /// Samples as `(series id, timestamp ms, value)`.
    Samples(Vec<(u64, i64, f64)>),
}

/// What replay cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub segment: PathBuf,
    pub offset: u64,
    /// Bytes dropped: the rest of that segment and every later one.
    pub bytes_dropped: u64,
    pub reason: String,
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub(crate) struct Cursor<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) pos: usize,
}

impl Cursor<'_> {
    pub(crate) fn uvarint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }

    pub(crate) fn varint(&mut self) -> Option<i64> {
        let u = self.uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.uvarint()?).ok()?;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
}

pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let kind = match record {
        Record::Series { id, labels } => {
            put_uvarint(out, *id);
            put_uvarint(out, labels.len() as u64);
            for (n, v) in labels.iter() {
                put_uvarint(out, n.len() as u64);
                out.extend_from_slice(n.as_bytes());
                put_uvarint(out, v.len() as u64);
                out.extend_from_slice(v.as_bytes());
            }
            SERIES
        }
        Record::Samples(samples) => {
            put_uvarint(out, samples.len() as u64);
            for &(id, t, v) in samples {
                put_uvarint(out, id);
                put_varint(out, t);
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            SAMPLES
        }
    };
    let len = (out.len() - start - HEADER_LEN) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&out[start + HEADER_LEN..]);
    out[start] = kind;
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    out[start + 5..start + 9].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// Decodes the records in `bytes`; stops at the first damaged one and says where and why.
pub fn decode_all(bytes: &[u8]) -> (Vec<Record>, Option<(usize, String)>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match decode_one(&bytes[pos..]) {
            Ok((record, used)) => {
                out.push(record);
                pos += used;
            }
            Err(reason) => return (out, Some((pos, reason))),
        }
    }
    (out, None)
}

fn decode_one(b: &[u8]) -> Result<(Record, usize), String> {
    let header = b.get(..HEADER_LEN).ok_or("torn record header")?;
    let kind = header[0];
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let crc = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    if len > RECORD_BYTES_MAX {
        return Err(format!("record length {len} is over the limit"));
    }
    let payload = b
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or("torn record (shorter than its length)")?;
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    if h.finalize() != crc {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor { b: payload, pos: 0 };
    let bad = || "malformed record".to_string();
    let record = match kind {
        SERIES => {
            let id = c.uvarint().ok_or_else(bad)?;
            let n = c.uvarint().ok_or_else(bad)?;
            let mut pairs = Vec::new();
            for _ in 0..n {
                let name = c.string().ok_or_else(bad)?;
                let value = c.string().ok_or_else(bad)?;
                pairs.push((name, value));
            }
            Record::Series {
                id,
                labels: Labels::new(pairs),
            }
        }
        SAMPLES => {
            let n = c.uvarint().ok_or_else(bad)?;
            // Each sample takes at least 10 bytes: a bound on what a length field can claim.
            if n > (payload.len() / 10) as u64 {
                return Err(bad());
            }
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let id = c.uvarint().ok_or_else(bad)?;
                let t = c.varint().ok_or_else(bad)?;
                let v = c.bytes(8).ok_or_else(bad)?;
                let mut le = [0u8; 8];
                le.copy_from_slice(v);
                samples.push((id, t, f64::from_bits(u64::from_le_bytes(le))));
            }
            Record::Samples(samples)
        }
        other => return Err(format!("unknown record type {other}")),
    };
    if c.pos != payload.len() {
        return Err(bad());
    }
    Ok((record, HEADER_LEN + len))
}

pub struct Wal {
    dir: PathBuf,
    file: File,
    segment: u64,
    size: u64,
    segment_bytes: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

impl Wal {
    /// Opens the log in `dir`, replaying what it holds. A damaged record ends the replay: the
    /// log is cut there (later segments removed) and the cut is returned for the caller to log.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        replay: impl FnMut(Record),
    ) -> io::Result<(Self, Option<Repair>)> {
        Self::open_from(dir, segment_bytes, 0, replay)
    }

    /// Like [`Wal::open`], replaying only segments from `from` on (older ones are removed:
    /// a checkpoint holds them).
    pub fn open_from(
        dir: &Path,
        segment_bytes: u64,
        from: u64,
        mut replay: impl FnMut(Record),
    ) -> io::Result<(Self, Option<Repair>)> {
        std::fs::create_dir_all(dir)?;
        for n in segments(dir)? {
            if n < from {
                std::fs::remove_file(segment_path(dir, n))?;
            }
        }
        let list = segments(dir)?;
        let mut repair = None;
        let mut last = None;
        for (i, &n) in list.iter().enumerate() {
            let path = segment_path(dir, n);
            let bytes = std::fs::read(&path)?;
            let (records, damage) = decode_all(&bytes);
            records.into_iter().for_each(&mut replay);
            last = Some(n);
            if let Some((offset, reason)) = damage {
                let mut dropped = (bytes.len() - offset) as u64;
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(offset as u64)?;
                for &later in &list[i + 1..] {
                    let p = segment_path(dir, later);
                    dropped += std::fs::metadata(&p)?.len();
                    std::fs::remove_file(p)?;
                }
                repair = Some(Repair {
                    segment: path,
                    offset: offset as u64,
                    bytes_dropped: dropped,
                    reason,
                });
                break;
            }
        }
        let segment = last.unwrap_or(from.max(1));
        let path = segment_path(dir, segment);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        sync_dir(dir)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                file,
                segment,
                size,
                segment_bytes,
            },
            repair,
        ))
    }

    /// Writes encoded records (not yet synced), starting a new segment when this one is full.
    pub fn write(&mut self, encoded: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + encoded.len() as u64 > self.segment_bytes {
            self.file.sync_data()?;
            self.segment += 1;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, self.segment))?;
            self.size = 0;
            sync_dir(&self.dir)?;
        }
        self.file.write_all(encoded)?;
        self.size += encoded.len() as u64;
        Ok(())
    }

    /// Closes the current segment (synced) and starts the next; returns the new segment's
    /// number: everything written from now on is in it or later ones.
    pub fn roll(&mut self) -> io::Result<u64> {
        self.file.sync_data()?;
        self.segment += 1;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, self.segment))?;
        self.size = 0;
        sync_dir(&self.dir)?;
        Ok(self.segment)
    }

    /// Deletes the segments before `segment` (a checkpoint now holds what they held).
    pub fn remove_before(&self, segment: u64) -> io::Result<()> {
        for n in segments(&self.dir)? {
            if n < segment {
                std::fs::remove_file(segment_path(&self.dir, n))?;
            }
        }
        Ok(())
    }

    /// A handle to sync what has been written so far (earlier segments were synced when they
    /// were closed).
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Bytes in all segments.
    pub fn disk_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for n in segments(&self.dir)? {
            total += std::fs::metadata(segment_path(&self.dir, n))?.len();
        }
        Ok(total)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample_records() -> Vec<Record> {
        vec![
            Record::Series {
                id: 0,
                labels: Labels::from_pairs(&[("__name__", "up"), ("job", "api")]),
            },
            Record::Samples(vec![(0, 1000, 1.0), (0, 2000, f64::NAN), (0, -5, -2.5)]),
        ]
    }

    #[test]
    fn records_round_trip_and_every_cut_is_detected() {
        let mut buf = Vec::new();
        for r in sample_records() {
            encode(&r, &mut buf);
        }
        let (back, damage) = decode_all(&buf);
        assert!(damage.is_none());
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], sample_records()[0]);
        let mut first = Vec::new();
        encode(&sample_records()[0], &mut first);
        for cut in (1..buf.len()).filter(|&c| c != first.len()) {
            let (_, damage) = decode_all(&buf[..cut]);
            assert!(damage.is_some(), "cut at {cut}");
        }
        let mut flipped = buf.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x10;
        let (ok, damage) = decode_all(&flipped);
        assert_eq!(ok.len(), 1);
        assert!(damage.unwrap().1.contains("checksum"));
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported_and_the_log_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        for r in sample_records() {
            encode(&r, &mut buf);
        }
        {
            let (mut wal, repair) = Wal::open(dir.path(), 1 << 20, |_| {}).unwrap();
            assert!(repair.is_none());
            wal.write(&buf).unwrap();
            wal.write(&buf[..buf.len() - 4]).unwrap();
        }
        let mut seen = Vec::new();
        let (mut wal, repair) = Wal::open(dir.path(), 1 << 20, |r| seen.push(r)).unwrap();
        let repair = repair.unwrap();
        assert_eq!(
            seen.len(),
            3,
            "both records of the first write, the series of the second"
        );
        let mut series_only = Vec::new();
        encode(&sample_records()[0], &mut series_only);
        assert_eq!(repair.offset as usize, buf.len() + series_only.len());
        assert!(repair.bytes_dropped > 0);
        wal.write(&buf).unwrap();
        drop(wal);
        let mut again = Vec::new();
        let (_, repair) = Wal::open(dir.path(), 1 << 20, |r| again.push(r)).unwrap();
        assert!(repair.is_none());
        assert_eq!(again.len(), 5);
    }
}

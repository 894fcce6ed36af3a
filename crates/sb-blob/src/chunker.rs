//! Content-defined chunking (FastCDC 2020): cut points follow the content, so inserting a byte
//! near the start of a file changes one or two chunks, not every chunk after it. Each chunk is
//! named by its BLAKE3 hash ([`BlobId`]).

use crate::BlobId;
use std::io::Read;

/// Chunk sizes: about 1 MiB on average, never under 256 KiB (but for a file's last chunk) or
/// over 4 MiB.
pub const MIN_SIZE: u32 = 256 * 1024;
pub const AVG_SIZE: u32 = 1024 * 1024;
pub const MAX_SIZE: u32 = 4 * 1024 * 1024;

/// One chunk of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub id: BlobId,
    pub data: Vec<u8>,
}

/// Cuts `source` into chunks, reading at most [`MAX_SIZE`] bytes ahead.
pub fn chunks<R: Read>(source: R) -> impl Iterator<Item = std::io::Result<Piece>> {
    fastcdc::v2020::StreamCDC::new(source, MIN_SIZE, AVG_SIZE, MAX_SIZE).map(|r| {
        let c = r.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        Ok(Piece {
            offset: c.offset,
            id: BlobId::of(&c.data),
            data: c.data,
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Deterministic noise (incompressible, no repeats).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
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
    fn chunks_cover_the_stream_within_their_bounds() {
        let data = noise(9 << 20, 7);
        let pieces: Vec<Piece> = chunks(data.as_slice()).map(Result::unwrap).collect();
        let mut at = 0u64;
        for (i, p) in pieces.iter().enumerate() {
            assert_eq!(p.offset, at);
            assert!(p.data.len() <= MAX_SIZE as usize);
            if i + 1 < pieces.len() {
                assert!(p.data.len() >= MIN_SIZE as usize);
            }
            assert_eq!(p.id, BlobId::of(&p.data));
            at += p.data.len() as u64;
        }
        assert_eq!(at, data.len() as u64);
        assert!(
            (4..=20).contains(&pieces.len()),
            "{} chunks for 9 MiB",
            pieces.len()
        );
    }

    #[test]
    fn one_inserted_byte_changes_only_the_chunks_around_it() {
        let data = noise(16 << 20, 11);
        let mut edited = data.clone();
        edited.insert(1000, 0x42);
        let ids = |d: &[u8]| -> Vec<BlobId> { chunks(d).map(|p| p.unwrap().id).collect() };
        let (before, after) = (ids(&data), ids(&edited));
        let new: Vec<&BlobId> = after.iter().filter(|id| !before.contains(id)).collect();
        assert!(
            new.len() <= 2,
            "{} of {} chunks changed",
            new.len(),
            after.len()
        );
    }
}

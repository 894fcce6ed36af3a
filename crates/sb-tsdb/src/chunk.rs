//! Gorilla-style XOR chunks (Pelkonen et al., VLDB 2015), as Prometheus stores samples:
//! timestamps as delta-of-delta in variable-width buckets, values as the XOR with the previous
//! value, written as only the meaningful bits. A regular series costs about 1.3 bytes a sample.
//!
//! Decoding takes untrusted bytes (a damaged file, a fuzzer): it is bounded by the sample count
//! in the chunk and stops with an error instead of panicking.

/// Samples in one chunk before it is sealed (Prometheus uses the same figure).
pub const SAMPLES_PER_CHUNK: u16 = 120;

#[derive(Clone, Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 = the last byte is full or there is none).
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, b: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if b && let Some(last) = self.bytes.last_mut() {
            *last |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// Writes the low `n` bits of `value`, most significant first, a byte's worth at a time.
    fn bits(&mut self, value: u64, n: u8) {
        let mut remaining = u32::from(n);
        while remaining > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let free = 8 - u32::from(self.used);
            let take = free.min(remaining);
            let part = ((value >> (remaining - take)) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.bytes.last_mut() {
                *last |= part << (free - take);
            }
            self.used = ((u32::from(self.used) + take) % 8) as u8;
            remaining -= take;
        }
    }
}

/// Reads bits most significant first through a 128-bit buffer refilled a byte at a time (wide
/// enough for a 64-bit read on top of leftover bits).
struct BitReader<'a> {
    bytes: &'a [u8],
    next: usize,
    buf: u128,
    /// Valid bits at the bottom of `buf`.
    n: u32,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            next: 0,
            buf: 0,
            n: 0,
        }
    }

    fn refill(&mut self) {
        while self.n <= 120 {
            let Some(&b) = self.bytes.get(self.next) else {
                return;
            };
            self.buf = (self.buf << 8) | u128::from(b);
            self.n += 8;
            self.next += 1;
        }
    }

    fn bit(&mut self) -> Option<bool> {
        Some(self.bits(1)? == 1)
    }

    fn bits(&mut self, k: u8) -> Option<u64> {
        let k = u32::from(k);
        if k == 0 {
            return Some(0);
        }
        if self.n < k {
            self.refill();
            if self.n < k {
                return None;
            }
        }
        let v = (self.buf >> (self.n - k)) & ((1u128 << k) - 1);
        self.n -= k;
        Some(v as u64)
    }
}

/// Timestamp delta-of-delta buckets: (prefix, prefix length, value bits).
const DOD_BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];

fn fits(dod: i64, bits: u8) -> bool {
    let half = 1i64 << (bits - 1);
    (-half + 1..=half).contains(&dod)
}

/// A chunk being written.
#[derive(Clone, Debug, Default)]
pub struct ChunkWriter {
    w: BitWriter,
    count: u16,
    min_t: i64,
    last_t: i64,
    last_delta: i64,
    last_v: u64,
    leading: u8,
    trailing: u8,
}

impl ChunkWriter {
    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count >= SAMPLES_PER_CHUNK
    }

    pub fn min_t(&self) -> i64 {
        self.min_t
    }

    pub fn max_t(&self) -> i64 {
        self.last_t
    }

    /// Appends a sample; the caller keeps timestamps increasing.
    pub fn push(&mut self, t: i64, v: f64) {
        let bits = v.to_bits();
        match self.count {
            0 => {
                self.w.bits(t as u64, 64);
                self.w.bits(bits, 64);
                self.min_t = t;
                self.leading = 0xff;
            }
            1 => {
                let delta = t.wrapping_sub(self.last_t);
                self.w.bits(delta as u64, 64);
                self.xor(bits);
                self.last_delta = delta;
            }
            _ => {
                let delta = t.wrapping_sub(self.last_t);
                let dod = delta.wrapping_sub(self.last_delta);
                if dod == 0 {
                    self.w.bit(false);
                } else if let Some(&(prefix, plen, vbits)) =
                    DOD_BUCKETS.iter().find(|(_, _, b)| fits(dod, *b))
                {
                    self.w.bits(prefix, plen);
                    self.w.bits(dod as u64 & ((1u64 << vbits) - 1), vbits);
                } else {
                    self.w.bits(0b1111, 4);
                    self.w.bits(dod as u64, 64);
                }
                self.xor(bits);
                self.last_delta = delta;
            }
        }
        self.last_t = t;
        self.last_v = bits;
        self.count += 1;
    }

    fn xor(&mut self, bits: u64) {
        let x = bits ^ self.last_v;
        if x == 0 {
            self.w.bit(false);
            return;
        }
        self.w.bit(true);
        let leading = (x.leading_zeros() as u8).min(31);
        let trailing = x.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            self.w.bit(false);
            let sig = 64 - self.leading - self.trailing;
            self.w.bits(x >> self.trailing, sig);
        } else {
            self.leading = leading;
            self.trailing = trailing;
            self.w.bit(true);
            self.w.bits(u64::from(leading), 5);
            let sig = 64 - leading - trailing;
            // 64 significant bits do not fit in 6 bits; 0 stands for 64.
            self.w.bits(u64::from(sig) & 0x3f, 6);
            self.w.bits(x >> trailing, sig);
        }
    }

    /// The finished chunk.
    pub fn seal(&self) -> Chunk {
        let mut bytes = self.w.bytes.clone();
        bytes.shrink_to_fit();
        Chunk {
            bytes,
            count: self.count,
            min_t: self.min_t,
            max_t: self.last_t,
        }
    }

    /// The samples written so far.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.w.bytes, self.count)
    }

    pub fn bytes_len(&self) -> usize {
        self.w.bytes.len()
    }
}

/// A sealed chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub count: u16,
    pub min_t: i64,
    pub max_t: i64,
}

impl Chunk {
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.bytes, self.count)
    }
}

/// Decodes a chunk's samples in order. Yields `Err` once and stops if the bytes are malformed.
pub struct ChunkIter<'a> {
    r: BitReader<'a>,
    remaining: u16,
    read: u16,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

/// The chunk's bytes end before its sample count says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chunk data ends early or is malformed")]
pub struct CorruptChunk;

impl<'a> ChunkIter<'a> {
    pub fn new(bytes: &'a [u8], count: u16) -> Self {
        Self {
            r: BitReader::new(bytes),
            remaining: count,
            read: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
        }
    }

    fn next_sample(&mut self) -> Option<(i64, f64)> {
        match self.read {
            0 => {
                self.t = self.r.bits(64)? as i64;
                self.v = self.r.bits(64)?;
            }
            1 => {
                self.delta = self.r.bits(64)? as i64;
                self.t = self.t.wrapping_add(self.delta);
                self.read_xor()?;
            }
            _ => {
                let mut prefix = 0u8;
                while prefix < 4 && self.r.bit()? {
                    prefix += 1;
                }
                let dod = match prefix {
                    0 => 0,
                    1..=3 => {
                        let vbits = DOD_BUCKETS[usize::from(prefix - 1)].2;
                        // Buckets hold -(2^(n-1) - 1) ..= 2^(n-1): a raw value above the
                        // middle is negative, the middle itself positive.
                        let raw = self.r.bits(vbits)? as i64;
                        let half = 1i64 << (vbits - 1);
                        if raw > half {
                            raw - (1i64 << vbits)
                        } else {
                            raw
                        }
                    }
                    _ => self.r.bits(64)? as i64,
                };
                self.delta = self.delta.wrapping_add(dod);
                self.t = self.t.wrapping_add(self.delta);
                self.read_xor()?;
            }
        }
        self.read += 1;
        Some((self.t, f64::from_bits(self.v)))
    }

    fn read_xor(&mut self) -> Option<()> {
        if !self.r.bit()? {
            return Some(());
        }
        if self.r.bit()? {
            self.leading = self.r.bits(5)? as u8;
            let sig = match self.r.bits(6)? as u8 {
                0 => 64,
                s => s,
            };
            if u32::from(self.leading) + u32::from(sig) > 64 {
                return None;
            }
            self.trailing = 64 - self.leading - sig;
        }
        let sig = 64u8.checked_sub(self.leading + self.trailing)?;
        if sig == 0 {
            return None;
        }
        let x = self.r.bits(sig)?;
        self.v ^= x.checked_shl(u32::from(self.trailing))?;
        Some(())
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<(i64, f64), CorruptChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match self.next_sample() {
            Some(s) => Some(Ok(s)),
            None => {
                self.remaining = 0;
                Some(Err(CorruptChunk))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn roundtrip(samples: &[(i64, f64)]) -> Chunk {
        let mut w = ChunkWriter::default();
        for &(t, v) in samples {
            w.push(t, v);
        }
        let c = w.seal();
        let back: Vec<(i64, f64)> = c.iter().map(|s| s.unwrap()).collect();
        assert_eq!(back.len(), samples.len());
        for (a, b) in back.iter().zip(samples) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "bit-exact, NaNs included");
        }
        c
    }

    #[test]
    fn regular_scrapes_cost_about_a_byte_and_a_half_a_sample() {
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, 1000.0 + (i / 4) as f64))
            .collect();
        let c = roundtrip(&samples);
        assert!(c.bytes.len() < 120 * 2, "{} bytes", c.bytes.len());
    }

    #[test]
    fn every_bucket_and_odd_value_round_trips() {
        let mut t = -5_000_000i64;
        let mut samples = Vec::new();
        let jumps = [
            1,
            1,
            2,
            100,
            8192,
            8193,
            -8190,
            65536,
            70_000,
            524_288,
            600_000,
            1 << 40,
            3,
            3,
        ];
        let values = [
            0.0,
            -0.0,
            1.5,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0002), // Prometheus' stale marker
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            1e-300,
            42.0,
            42.0,
            -7.25,
            f64::from_bits(1),
        ];
        let mut delta = 1000i64;
        for (j, v) in jumps.iter().zip(values) {
            delta += j;
            t += delta.max(1);
            samples.push((t, v));
        }
        roundtrip(&samples);
    }

    #[test]
    fn truncated_or_garbage_chunks_end_in_an_error_not_a_panic() {
        let samples: Vec<(i64, f64)> = (0..50).map(|i| (i * 1000, i as f64 * 0.1)).collect();
        let c = roundtrip(&samples);
        for cut in 0..c.bytes.len() {
            let n = ChunkIter::new(&c.bytes[..cut], c.count).count();
            assert!(n <= samples.len());
            assert!(ChunkIter::new(&c.bytes[..cut], c.count).any(|s| s.is_err()));
        }
        let garbage = [0xffu8; 40];
        let _ = ChunkIter::new(&garbage, u16::MAX).count();
    }
}

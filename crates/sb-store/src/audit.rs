//! The audit log's hash chain.
//!
//! Each record's `hash` is SHA-256 over its predecessor's hash and its own fields, each
//! length-prefixed so no two different records can encode alike. The first record's predecessor
//! is [`GENESIS`]. Editing, inserting or deleting any record breaks every hash after it.

use crate::{AuditEntry, AuditRecord};
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn chain_hash(prev_hash: &str, seq: i64, entry: &AuditEntry) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(prev_hash.as_bytes());
    field(&seq.to_be_bytes());
    field(&entry.at.0.to_be_bytes());
    field(entry.actor.as_bytes());
    field(entry.action.as_bytes());
    field(entry.target.as_bytes());
    field(entry.ip.as_bytes());
    field(entry.detail.as_bytes());
    hex::encode(h.finalize())
}

/// Where a chain check stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// The record's `prev_hash` is not its predecessor's hash (a record was removed or inserted).
    Link { seq: i64 },
    /// The record's fields no longer hash to its stored `hash` (it was edited).
    Content { seq: i64 },
}

impl ChainBreak {
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Link { seq } | ChainBreak::Content { seq } => *seq,
        }
    }
}

/// Checks records in sequence order, carrying the chain across pages.
#[derive(Debug)]
pub struct ChainVerifier {
    prev: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            prev: GENESIS.to_string(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, rec: &AuditRecord) -> Result<(), ChainBreak> {
        if rec.prev_hash != self.prev {
            return Err(ChainBreak::Link { seq: rec.seq });
        }
        if chain_hash(&rec.prev_hash, rec.seq, &rec.entry) != rec.hash {
            return Err(ChainBreak::Content { seq: rec.seq });
        }
        self.prev = rec.hash.clone();
        self.checked += 1;
        Ok(())
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }
}

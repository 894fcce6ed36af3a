//! Opaque bearer tokens: 256 random bits, base64url, with a prefix naming the kind so secret
//! scanners and people can tell them apart. Only the SHA-256 of a token is ever stored.

use base64::Engine;
use rand::RngCore;
use sb_core::Secret;
use sha2::{Digest, Sha256};

pub const SESSION_PREFIX: &str = "sbs_";
pub const API_TOKEN_PREFIX: &str = "sbt_";
pub const INVITE_PREFIX: &str = "sbi_";
pub const SETUP_PREFIX: &str = "sbsetup_";
/// Expiring download links for files.
pub const LINK_PREFIX: &str = "sbl_";

/// Longest token text accepted from a client; anything longer is rejected before hashing.
pub const TOKEN_LENGTH_MAX: usize = 128;

pub fn generate(prefix: &str) -> Secret<String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Secret::new(format!("{prefix}{body}"))
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let a = generate(SESSION_PREFIX);
        let b = generate(SESSION_PREFIX);
        assert_ne!(a, b);
        assert!(a.expose().starts_with(SESSION_PREFIX));
        // 32 bytes in unpadded base64 is 43 characters: 256 bits of entropy.
        assert_eq!(a.expose().len(), SESSION_PREFIX.len() + 43);
        assert_ne!(hash(a.expose()), hash(b.expose()));
    }
}

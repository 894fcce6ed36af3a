//! Firmware signatures: Ed25519 over the image's SHA-256, made with the operator's key (which
//! never leaves the operator's machine) and checked by the server on upload and by each device
//! before it installs anything. Keys and signatures travel as hex.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

pub fn sha256_hex(image: &[u8]) -> String {
    hex::encode(Sha256::digest(image))
}

/// A new operator key: (secret seed, public key), both hex.
pub fn keygen() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    (
        hex::encode(seed),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

fn decode32(what: &str, s: &str) -> Result<[u8; 32], String> {
    hex::decode(s.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("{what} is not 64 hex digits"))
}

/// The public key (hex) of a secret seed (hex).
pub fn public_key(seed_hex: &str) -> Result<String, String> {
    let key = SigningKey::from_bytes(&decode32("the signing key", seed_hex)?);
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

/// Signs an image: the signature (hex).
pub fn sign(seed_hex: &str, image: &[u8]) -> Result<String, String> {
    let key = SigningKey::from_bytes(&decode32("the signing key", seed_hex)?);
    Ok(hex::encode(key.sign(&Sha256::digest(image)).to_bytes()))
}

/// Checks an image against its signature and the public key it claims.
pub fn verify(image: &[u8], signature_hex: &str, public_hex: &str) -> Result<(), String> {
    let key = VerifyingKey::from_bytes(&decode32("the public key", public_hex)?)
        .map_err(|_| "the public key is not a valid Ed25519 key".to_string())?;
    let sig: [u8; 64] = hex::decode(signature_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the signature is not 128 hex digits")?;
    key.verify(&Sha256::digest(image), &Signature::from_bytes(&sig))
        .map_err(|_| {
            "the signature does not match the image (corrupt, or signed by another key)".into()
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signed_images_verify_and_any_change_is_caught() {
        let (seed, public) = keygen();
        assert_eq!(public_key(&seed).unwrap(), public);
        let image = vec![7u8; 10_000];
        let sig = sign(&seed, &image).unwrap();
        verify(&image, &sig, &public).unwrap();
        let mut corrupt = image.clone();
        corrupt[5_000] ^= 1;
        assert!(verify(&corrupt, &sig, &public).is_err());
        let (_, other) = keygen();
        assert!(verify(&image, &sig, &other).is_err(), "another key");
        assert!(verify(&image, "zz", &public).is_err());
        assert!(verify(&image, &sig, "12").is_err());
    }
}

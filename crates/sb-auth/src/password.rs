//! Password hashing (Argon2id) and the password policy.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sb_core::Secret;
use sb_core::config::AuthConfig;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Common passwords refused at registration and password change, compared case-insensitively.
/// A short list of the most used passwords from public breach corpora; the minimum length
/// already refuses most of the rest.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyViolation {
    #[error("password must be at least {0} characters")]
    TooShort(usize),
    #[error("password must be at most {0} characters")]
    TooLong(usize),
    #[error("password is too common; choose a longer, less guessable one")]
    Common,
    #[error("password must not contain the username")]
    ContainsUsername,
}

pub fn check_policy(
    password: &str,
    username: &str,
    config: &AuthConfig,
) -> Result<(), PolicyViolation> {
    let len = password.chars().count();
    if len < config.password_min_length {
        return Err(PolicyViolation::TooShort(config.password_min_length));
    }
    if len > config.password_max_length {
        return Err(PolicyViolation::TooLong(config.password_max_length));
    }
    let lower = password.to_lowercase();
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        return Err(PolicyViolation::ContainsUsername);
    }
    if COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .any(|common| !common.is_empty() && common == lower)
    {
        return Err(PolicyViolation::Common);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("hashing task failed")]
    Join,
}

/// Hashes and verifies passwords on the blocking pool, at most `password_hash_concurrency_max`
/// at a time (each holds `argon2_memory_kib` of memory).
#[derive(Clone)]
pub struct PasswordHasherPool {
    params: Params,
    permits: Arc<Semaphore>,
    /// A real hash of a fixed password, verified against when the user does not exist, so an
    /// unknown username costs the same time as a wrong password. Made at construction, so even
    /// the first unknown-user login takes no extra time.
    dummy: Arc<String>,
}

impl PasswordHasherPool {
    pub fn new(config: &AuthConfig) -> Result<Self, HashError> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| HashError::Params(e.to_string()))?;
        let dummy = hash_blocking(params.clone(), "dummy password for unknown users")?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(config.password_hash_concurrency_max.max(1))),
            dummy: Arc::new(dummy),
        })
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    pub async fn hash(&self, password: Secret<String>) -> Result<String, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Join)?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_blocking(params, password.expose()))
            .await
            .map_err(|_| HashError::Join)?
    }

    /// Verifies `password` against `hash`, or against a dummy hash when `hash` is `None`
    /// (unknown user), always doing one full Argon2 computation.
    pub async fn verify(
        &self,
        password: Secret<String>,
        hash: Option<String>,
    ) -> Result<bool, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Join)?;
        let dummy = self.dummy.clone();
        tokio::task::spawn_blocking(move || {
            let (hash, real) = match hash {
                Some(h) => (h, true),
                None => ((*dummy).clone(), false),
            };
            let parsed = PasswordHash::new(&hash).map_err(|e| HashError::Hash(e.to_string()))?;
            // Verification uses the parameters recorded in the hash itself, so hashes made
            // with older parameters keep working after the config changes.
            let ok = Argon2::default()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok();
            Ok(ok && real)
        })
        .await
        .map_err(|_| HashError::Join)?
    }
}

fn hash_blocking(params: Params, password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    PasswordHasherPool::argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> AuthConfig {
        AuthConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }
    }

    #[test]
    fn policy_refuses_short_long_common_and_username() {
        let c = AuthConfig::default();
        assert_eq!(
            check_policy("short", "bob", &c),
            Err(PolicyViolation::TooShort(10))
        );
        assert_eq!(
            check_policy(&"x".repeat(257), "bob", &c),
            Err(PolicyViolation::TooLong(256))
        );
        assert_eq!(
            check_policy("Password123", "bob", &c),
            Err(PolicyViolation::Common)
        );
        assert_eq!(
            check_policy("alice-is-great-99", "alice", &c),
            Err(PolicyViolation::ContainsUsername)
        );
        assert_eq!(check_policy("correct horse battery", "bob", &c), Ok(()));
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let pool = PasswordHasherPool::new(&cheap()).unwrap();
        let h = pool
            .hash(Secret::new("correct horse battery".into()))
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let ok = pool
            .verify(Secret::new("correct horse battery".into()), Some(h.clone()))
            .await
            .unwrap();
        let bad = pool
            .verify(Secret::new("wrong horse battery".into()), Some(h))
            .await
            .unwrap();
        assert!(ok && !bad);
    }

    #[tokio::test]
    async fn unknown_user_never_verifies_even_with_the_dummy_password() {
        let pool = PasswordHasherPool::new(&cheap()).unwrap();
        let r = pool
            .verify(Secret::new("dummy password for unknown users".into()), None)
            .await
            .unwrap();
        assert!(!r);
    }

    #[test]
    fn default_parameters_follow_owasp() {
        let c = AuthConfig::default();
        assert_eq!(
            (
                c.argon2_memory_kib,
                c.argon2_iterations,
                c.argon2_parallelism
            ),
            (19_456, 2, 1)
        );
    }
}

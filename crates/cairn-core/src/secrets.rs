//! Passwords and access tokens: how they are made, hashed and checked.
//!
//! Passwords are hashed with argon2id (a PHC string is stored). Access tokens are 256 random
//! bits; only their SHA-256 is stored, so a leaked database does not leak usable tokens, and
//! a lookup stays one indexed read (a slow hash is not needed for a random secret).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// Prefix of every access token Cairn issues, so that leaked tokens are easy to recognise.
const TOKEN_PREFIX: &str = "cairn_";

/// The longest password accepted, in bytes: hashing is costly, and no one needs more.
pub const MAX_PASSWORD_BYTES: usize = 512;

/// Hashes a password off the async executor.
pub async fn hash_password(password: String) -> Result<String> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid_param("Password is too long"));
    }
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rng().fill(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|_| internal())?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|_| internal())
    })
    .await
    .map_err(|_| internal())?
}

/// Checks a password against a stored PHC string, off the async executor.
pub async fn verify_password(password: String, stored: String) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// A new random access token.
pub fn new_access_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_string(32))
}

/// `bytes` random bytes, base64url-encoded.
pub fn random_string(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    URL_SAFE_NO_PAD.encode(buf)
}

/// `len` random ASCII letters and digits.
pub fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The stored form of an access token: its SHA-256, hex-encoded.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

fn internal() -> Error {
    Error::new(ErrorKind::Internal, "Password hashing failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_verify_only_with_the_right_password() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), hash.clone()).await);
        assert!(!verify_password("wrong horse".into(), hash.clone()).await);
        assert!(!verify_password("correct horse".into(), "not a hash".into()).await);
        let again = hash_password("correct horse".into()).await.unwrap();
        assert_ne!(hash, again, "salts differ");
    }

    #[tokio::test]
    async fn overlong_passwords_are_refused() {
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(
            hash_password(long.clone()).await.unwrap_err().kind,
            ErrorKind::InvalidParam
        );
        let hash = hash_password("short".into()).await.unwrap();
        assert!(!verify_password(long, hash).await);
    }

    #[test]
    fn tokens_are_random_and_hashed_stably() {
        let a = new_access_token();
        let b = new_access_token();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

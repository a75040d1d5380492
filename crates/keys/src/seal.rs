//! Secrets in a key's record (upstream `api_key`s of its own deployments), encrypted with a salt key from the
//! environment: ChaCha20-Poly1305, the key being the SHA-256 of the salt key, a random nonce per value.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::KeyError;

/// How an encrypted value starts in the store: `enc:v1:<hex of nonce, ciphertext and tag>`.
const SEALED: &str = "enc:v1:";

/// Whether `value` is an encrypted value (from [`seal`]).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED)
}

fn cipher(salt: &str) -> Result<LessSafeKey, KeyError> {
    let digest = ring::digest::digest(&ring::digest::SHA256, salt.as_bytes());
    UnboundKey::new(&CHACHA20_POLY1305, digest.as_ref())
        .map(LessSafeKey::new)
        .map_err(|_| KeyError::Sealing("cannot set up the cipher"))
}

/// `secret` encrypted for the store (ChaCha20-Poly1305, key = SHA-256 of `salt`, random nonce): `enc:v1:<hex>`.
pub fn seal(salt: &str, secret: &str) -> Result<String, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| KeyError::Sealing("no randomness for a nonce"))?;
    let mut data = secret.as_bytes().to_vec();
    cipher(salt)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .map_err(|_| KeyError::Sealing("cannot encrypt"))?;
    let mut out = String::from(SEALED);
    for byte in nonce.iter().chain(&data) {
        out.push_str(&format!("{byte:02x}"));
    }
    Ok(out)
}

/// The secret [`seal`] encrypted, with the same salt key.
pub fn open(salt: &str, sealed: &str) -> Result<String, KeyError> {
    let Some(hex) = sealed.strip_prefix(SEALED) else {
        return Err(KeyError::Sealing("not an encrypted value"));
    };
    let broken = || KeyError::Sealing("the value does not open with this salt key");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(broken)?;
    if bytes.len() < NONCE_LEN {
        return Err(broken());
    }
    let (nonce, data) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| broken())?;
    let mut data = data.to_vec();
    let plain = cipher(salt)?
        .open_in_place(nonce, Aad::empty(), &mut data)
        .map_err(|_| broken())?;
    String::from_utf8(plain.to_vec()).map_err(|_| broken())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_with_the_same_salt_only() {
        let sealed = seal("salt-1", "sk-upstream-secret").unwrap();
        assert!(sealed.starts_with(SEALED) && !sealed.contains("upstream"));
        assert_eq!(open("salt-1", &sealed).unwrap(), "sk-upstream-secret");
        assert!(open("salt-2", &sealed).is_err());
        assert!(open("salt-1", "enc:v1:zz").is_err());
        assert_ne!(
            seal("salt-1", "sk-upstream-secret").unwrap(),
            sealed,
            "fresh nonce"
        );
    }
}

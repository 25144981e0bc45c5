//! Encryption at rest of users' GitHub tokens: XChaCha20-Poly1305 with a 256-bit key kept
//! in a file of its own (mode 0600, created on first use), so a copy of the index database
//! alone reveals no token. Each ciphertext is bound to its user (associated data), so a
//! ciphertext moved to another user's row does not decrypt.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::{GitHubError, Secret, random_bytes};

const NONCE_LEN: usize = 24;

/// Seals and opens users' tokens with the deployment's key.
pub struct TokenSeal {
    cipher: XChaCha20Poly1305,
    path: PathBuf,
}

impl std::fmt::Debug for TokenSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSeal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenSeal {
    /// The key in `path`, created (32 random bytes, mode 0600) when the file does not
    /// exist. A file of the wrong size or readable by others is refused.
    pub fn open_or_create(path: &Path) -> Result<TokenSeal, GitHubError> {
        let key_err = |e: std::io::Error| {
            GitHubError::Key(format!("token encryption key {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(key_err)?;
        }
        let fresh = random_bytes::<32>()?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(&fresh)
                    .and_then(|_| f.sync_all())
                    .map_err(key_err)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(key_err(e)),
        }
        let meta = std::fs::metadata(path).map_err(key_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(GitHubError::Key(format!(
                "token encryption key {} is readable by other users; run chmod 600 on it",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(key_err)?;
        if bytes.len() != 32 {
            return Err(GitHubError::Key(format!(
                "token encryption key {} holds {} bytes, not 32; restore it from a backup (or remove it: users then sign in with GitHub again)",
                path.display(),
                bytes.len()
            )));
        }
        Ok(TokenSeal {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&bytes)),
            path: path.to_path_buf(),
        })
    }

    /// `token` encrypted for `user_id`: a random nonce followed by the ciphertext.
    pub fn seal(&self, user_id: i64, token: &Secret) -> Result<Vec<u8>, GitHubError> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let aad = user_id.to_be_bytes();
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: token.expose().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| GitHubError::Key("encrypting a token failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(ct);
        Ok(out)
    }

    /// The token sealed for `user_id`, or an error when it was sealed with another key or
    /// for another user, or was altered.
    pub fn open(&self, user_id: i64, sealed: &[u8]) -> Result<Secret, GitHubError> {
        let fail = || {
            GitHubError::SignInRequired(
                "the stored GitHub token cannot be decrypted with this server's key".into(),
            )
        };
        if sealed.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let aad = user_id.to_be_bytes();
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| fail())?;
        String::from_utf8(plain).map(Secret).map_err(|_| fail())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_key_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/github-tokens.key");
        let seal = TokenSeal::open_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let token = Secret::new("gho_secretvalue");
        let sealed = seal.seal(7, &token).unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"secretvalue"));
        assert_eq!(seal.open(7, &sealed).unwrap(), token);
        assert!(seal.open(8, &sealed).is_err(), "another user's row");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(seal.open(7, &tampered).is_err());
        assert!(seal.open(7, b"short").is_err());
        // The same file gives the same key; another file another key.
        let again = TokenSeal::open_or_create(&path).unwrap();
        assert_eq!(again.open(7, &sealed).unwrap(), token);
        let other = TokenSeal::open_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(7, &sealed).is_err());
    }

    #[test]
    fn a_damaged_or_exposed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"abc").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = TokenSeal::open_or_create(&short).unwrap_err().to_string();
        assert!(e.contains("not 32"), "{e}");
        let open = dir.path().join("open.key");
        std::fs::write(&open, [0u8; 32]).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = TokenSeal::open_or_create(&open).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}

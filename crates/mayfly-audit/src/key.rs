//! The checkpoint signing key, kept in the state directory.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::record::hex;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("failed to read the audit signing key {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to create the audit signing key {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("the audit signing key {path} is not 32 bytes; restore it from a backup, or move it away to start a new log")]
    Malformed { path: PathBuf },
}

/// An Ed25519 key read from, or created in, a file readable by its owner only.
pub struct SigningKeyFile {
    key: SigningKey,
}

impl SigningKeyFile {
    /// Loads the key at `path`.
    pub fn load(path: &Path) -> Result<SigningKeyFile, KeyError> {
        let bytes = fs::read(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        Self::from_file_bytes(path, bytes)
    }

    fn from_file_bytes(path: &Path, bytes: Vec<u8>) -> Result<SigningKeyFile, KeyError> {
        let secret: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed { path: path.into() })?;
        Ok(SigningKeyFile { key: SigningKey::from_bytes(&secret) })
    }

    /// Loads the key at `path`, creating it from /dev/urandom when missing.
    pub fn load_or_create(path: &Path) -> Result<SigningKeyFile, KeyError> {
        match fs::read(path) {
            Ok(bytes) => Self::from_file_bytes(path, bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // Write the key under a private name, then link it into place:
                // a second process starting at the same moment either wins the
                // link or reads the complete key that won.
                let create = |source| KeyError::Create { path: path.into(), source };
                let mut secret = [0u8; 32];
                fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut secret)).map_err(create)?;
                let unique: String = secret[..8].iter().map(|b| format!("{b:02x}")).collect();
                let temporary = path.with_extension(format!("tmp.{unique}"));
                let mut file = fs::File::options().write(true).create(true).truncate(true).mode(0o600).open(&temporary).map_err(create)?;
                file.write_all(&secret).and_then(|()| file.sync_all()).map_err(create)?;
                let linked = fs::hard_link(&temporary, path);
                let _ = fs::remove_file(&temporary);
                match linked {
                    Ok(()) => Ok(SigningKeyFile { key: SigningKey::from_bytes(&secret) }),
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
                    Err(source) => Err(create(source)),
                }
            }
            Err(source) => Err(KeyError::Read { path: path.into(), source }),
        }
    }

    pub fn sign(&self, message: &[u8]) -> String {
        hex(&self.key.sign(message).to_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Checks a hex signature made by [`SigningKeyFile::sign`].
pub fn verify_signature(key: &VerifyingKey, message: &[u8], signature: &str) -> bool {
    let Some(bytes) = unhex(signature) else { return false };
    let Ok(signature) = Signature::from_slice(&bytes) else { return false };
    key.verify_strict(message, &signature).is_ok()
}

/// Builds the message a checkpoint signs: the position and hash of the record it covers.
pub fn checkpoint_message(seq: u64, head: &str) -> Vec<u8> {
    format!("mayfly-audit-checkpoint\n{seq}\n{head}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_and_forgery_fails() {
        let dir = std::env::temp_dir().join(format!("mayfly-audit-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("signing.key");
        let key = SigningKeyFile::load_or_create(&path).unwrap();
        let again = SigningKeyFile::load_or_create(&path).unwrap();
        assert_eq!(key.verifying_key(), again.verifying_key());
        let signature = key.sign(b"head");
        assert!(verify_signature(&key.verifying_key(), b"head", &signature));
        assert!(!verify_signature(&key.verifying_key(), b"other", &signature));
        assert!(!verify_signature(&key.verifying_key(), b"head", "00"));
        fs::write(&path, b"short").unwrap();
        assert!(matches!(SigningKeyFile::load_or_create(&path), Err(KeyError::Malformed { .. })));
        fs::remove_dir_all(dir).unwrap();
    }
}

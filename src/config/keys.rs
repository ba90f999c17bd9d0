//! Master keys from where the user keeps them: a key file (one key per
//! line, the first seals new objects) or `WALVAULT_KEY`; and new random keys.

use std::path::{Path, PathBuf};

use crate::format::key::{KEY_LEN_BYTES, KeyError, Keyring, MasterKey};

use super::Error;

/// Loads the keyring: `--key-file` (one or more keys, first writes) or
/// `WALVAULT_KEY` (one key). Neither means an unencrypted repository.
///
/// # Errors
/// When both are given, or a key is malformed.
pub fn load_keyring(key_file: Option<&PathBuf>, key_env: Option<&str>) -> Result<Keyring, Error> {
    match (key_file, key_env.filter(|k| !k.trim().is_empty())) {
        (Some(_), Some(_)) => Err(Error::Invalid {
            what: "key settings",
            value: String::new(),
            reason: "give either --key-file or WALVAULT_KEY, not both".into(),
        }),
        (Some(path), None) => Ok(read_key_file(path)?),
        (None, Some(hex)) => Ok(keyring_from_hex(hex)?),
        (None, None) => Ok(Keyring::none()),
    }
}

/// The keyring of one key given as 64 hexadecimal characters (`WALVAULT_KEY`).
///
/// # Errors
/// When the text is not such a key.
pub fn keyring_from_hex(hex: &str) -> Result<Keyring, KeyError> {
    Ok(Keyring::single(MasterKey::from_hex(hex)?))
}

/// Reads a key file (see [`Keyring::from_key_file_text`]).
///
/// # Errors
/// When the file cannot be read or holds no valid key.
pub fn read_key_file(path: &Path) -> Result<Keyring, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    Keyring::from_key_file_text(&text, &shown)
}

/// A new random master key.
pub fn generate_key() -> MasterKey {
    let mut bytes = [0u8; KEY_LEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    MasterKey::from_bytes(bytes)
}

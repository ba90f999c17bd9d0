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
    MasterKey::from_hex(hex)
        .map(Keyring::single)
        .map_err(|_| KeyError::MalformedLine {
            path: "WALVAULT_KEY".into(),
            line: 1,
        })
}

/// Permission bits that must be clear on a key file (0600 or stricter, as
/// the configuration file and the repository settings file).
const KEY_FILE_OTHERS_MODE: u32 = 0o077;

/// Reads a key file (see [`Keyring::from_key_file_text`]), refusing one
/// that others may read or change.
///
/// # Errors
/// When the file cannot be read, others may read or change it, or it
/// holds no valid key.
pub fn read_key_file(path: &Path) -> Result<Keyring, KeyError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read_error = |source| KeyError::Read {
        path: shown.clone(),
        source,
    };
    // The mode and the text come from one open file.
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o777;
    if mode & KEY_FILE_OTHERS_MODE != 0 {
        return Err(KeyError::Exposed { path: shown, mode });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    Keyring::from_key_file_text(&text, &shown)
}

/// A new random master key.
pub fn generate_key() -> MasterKey {
    let mut bytes = [0u8; KEY_LEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    MasterKey::from_bytes(bytes)
}

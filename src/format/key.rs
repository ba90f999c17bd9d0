//! Master keys, key ids and per-object data keys.
//!
//! A master key is 32 random bytes, written as 64 hexadecimal characters. Its
//! id is the first four bytes of SHA-256 over a fixed label and the key, so a
//! sealed object names the key it needs without revealing it. Each object gets
//! its own data key, derived with HKDF-SHA256 from the master key and the
//! object's random salt; frame nonces are then a plain counter. Reading key
//! files and drawing random keys happen in [`crate::config`].

use std::fmt;

use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};

/// Length of a master key in bytes (AES-256).
pub const KEY_LEN_BYTES: usize = 32;

/// The public id of a master key: four bytes, written as 8 lowercase
/// hexadecimal digits (`0a0b0c0d`) wherever it is shown or stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:08x}", self.0))
    }
}

/// Text that is not a key id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key id {0:?} is not 8 lowercase hexadecimal digits")]
pub struct ParseKeyIdError(pub String);

impl std::str::FromStr for KeyId {
    type Err = ParseKeyIdError;

    /// Exactly 8 lowercase hexadecimal digits, as walvault writes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 8 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseKeyIdError(s.to_string()));
        }
        u32::from_str_radix(s, 16)
            .map(KeyId)
            .map_err(|_| ParseKeyIdError(s.to_string()))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A 256-bit master key and its public id.
pub struct MasterKey {
    id: KeyId,
    bytes: SecretBox<[u8; KEY_LEN_BYTES]>,
}

/// A key given in a form walvault cannot use.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hexadecimal characters.
    #[error(
        "a key must be 64 hexadecimal characters (32 bytes); run `walvault keygen` to make one"
    )]
    Malformed,
    /// A line of a key file is not a key.
    #[error(
        "{path}, line {line}: a key must be 64 hexadecimal characters (32 bytes); run `walvault keygen` to make one"
    )]
    MalformedLine {
        /// Where the keys come from (a key file, or the setting that holds them).
        path: String,
        /// The 1-based line.
        line: usize,
    },
    /// The key file holds no key.
    #[error("key file {path} holds no key")]
    Empty {
        /// The file.
        path: String,
    },
    /// Others may read or change the key file.
    #[error(
        "key file {path} can be read or changed by others (mode {mode:04o}): whoever reads it can open every object; run chmod 600 {path}"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file cannot be read.
    #[error("cannot read key file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl MasterKey {
    /// Builds a key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN_BYTES]) -> Self {
        let id = key_id(&bytes);
        MasterKey {
            id,
            bytes: SecretBox::new(Box::new(bytes)),
        }
    }

    /// Parses 64 hexadecimal characters (surrounding white space is ignored).
    ///
    /// # Errors
    /// [`KeyError::Malformed`] for anything else.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != 2 * KEY_LEN_BYTES {
            return Err(KeyError::Malformed);
        }
        let mut bytes = [0u8; KEY_LEN_BYTES];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| KeyError::Malformed)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key as 64 lowercase hexadecimal characters (for `keygen` only).
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes.expose_secret())
    }

    /// The public id of this key.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key that authenticates the repository's identity document.
    pub(crate) fn derive_manifest_key(&self) -> [u8; KEY_LEN_BYTES] {
        let hk = Hkdf::<Sha256>::new(None, self.bytes.expose_secret());
        let mut okm = [0u8; KEY_LEN_BYTES];
        hk.expand(b"walvault v2 repository manifest", &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// Derives the data key of one object from this master key and its salt.
    pub(crate) fn derive_object_key(&self, salt: &[u8]) -> [u8; KEY_LEN_BYTES] {
        let hk = Hkdf::<Sha256>::new(Some(salt), self.bytes.expose_secret());
        let mut okm = [0u8; KEY_LEN_BYTES];
        hk.expand(b"walvault v1 object key", &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

/// The id of a master key: the first 4 bytes of SHA-256("walvault key id" || key).
fn key_id(bytes: &[u8; KEY_LEN_BYTES]) -> KeyId {
    let mut h = Sha256::new();
    h.update(b"walvault key id");
    h.update(bytes);
    let digest = h.finalize();
    KeyId(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

/// The keys walvault may use: the first seals new objects, all of them open.
///
/// A keyring holding an old key after the new one is how keys are rotated:
/// objects sealed before keep opening, new ones use the first key.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    /// A keyring with no key: objects are stored unencrypted (still checksummed).
    pub fn none() -> Self {
        Keyring { keys: Vec::new() }
    }

    /// A keyring of one key.
    pub fn single(key: MasterKey) -> Self {
        Keyring { keys: vec![key] }
    }

    /// Parses a key file: one 64-hex key per line, `#` comments and blank lines
    /// ignored; the first key seals new objects.
    ///
    /// # Errors
    /// On a malformed line or a file without keys.
    pub fn from_key_file_text(text: &str, path: &str) -> Result<Self, KeyError> {
        let keys = text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(i, l)| {
                MasterKey::from_hex(l).map_err(|_| KeyError::MalformedLine {
                    path: path.to_string(),
                    line: i + 1,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::Empty { path: path.into() });
        }
        Ok(Keyring { keys })
    }

    /// The keys of this keyring whose ids are in `ids`, in the keyring's
    /// order.
    pub fn only(&self, ids: &[KeyId]) -> Keyring {
        Keyring {
            keys: self
                .keys
                .iter()
                .filter(|k| ids.contains(&k.id))
                .map(|k| MasterKey {
                    id: k.id,
                    bytes: SecretBox::new(Box::new(*k.bytes.expose_secret())),
                })
                .collect(),
        }
    }

    /// The key new objects are sealed with, if any.
    pub fn write_key(&self) -> Option<&MasterKey> {
        self.keys.first()
    }

    /// The key with this id, if the keyring has it.
    pub fn get(&self, id: KeyId) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Whether the keyring holds no key (unencrypted repository).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All keys, write key first.
    pub fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        self.keys.iter()
    }

    /// The ids of all keys, write key first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parses_and_has_stable_id() {
        let k = MasterKey::from_hex(&"00".repeat(32)).unwrap();
        // The id of the all-zero key is fixed by the format; see docs/format.md.
        assert_eq!(k.id(), key_id(&[0; 32]));
        assert_eq!(k.id().to_string().len(), 8);
        assert_eq!(k.id().to_string().parse::<KeyId>(), Ok(k.id()));
        assert!("0A0B0C0D".parse::<KeyId>().is_err());
        assert!("0a0b0c0".parse::<KeyId>().is_err());
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
        let generated = MasterKey::from_bytes([9; KEY_LEN_BYTES]);
        let again = MasterKey::from_hex(&generated.to_hex()).unwrap();
        assert_eq!(generated.id(), again.id());
    }

    #[test]
    fn key_file_puts_first_key_first() {
        let a = "11".repeat(32);
        let b = "22".repeat(32);
        let ring = Keyring::from_key_file_text(&format!("# new\n{a}\n\n{b}\n"), "f").unwrap();
        assert_eq!(
            ring.write_key().unwrap().id(),
            MasterKey::from_hex(&a).unwrap().id()
        );
        assert!(ring.get(MasterKey::from_hex(&b).unwrap().id()).is_some());
        assert!(Keyring::from_key_file_text("# nothing\n", "f").is_err());
    }

    #[test]
    fn debug_does_not_show_key() {
        let k = MasterKey::from_hex(&"ab".repeat(32)).unwrap();
        assert!(!format!("{k:?}").contains("abab"));
    }
}

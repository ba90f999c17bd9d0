//! Writing objects: sealing on the blocking pool, create-only writes, and
//! what a write that meets an existing object means (the same plaintext is
//! a retry and succeeds; different plaintext is [`Error::Conflict`]). Also
//! the probe of whether the store honours create-only writes, and the
//! check-then-write fallback for stores that do not.
//!
//! It does not make writes to a local directory durable (`storage::local`
//! does) and builds no keys (`storage::layout` does).

use bytes::Bytes;
use object_store::{PutMode, PutOptions, PutPayload};

use crate::format::chunk::{self, Binding, SealOptions};
use crate::storage::{Error, layout};

use super::{BASE_REQUEST_TIMEOUT, Repository, RequestCounts, TIMEOUT_PER_MIB};

/// An object sealed for one key, ready to store: a retried write sends
/// these same bytes instead of sealing (compressing, encrypting) again.
#[derive(Clone, Debug)]
pub struct SealedObject {
    key: String,
    bytes: Bytes,
}

impl SealedObject {
    /// The key it was sealed for (and is bound to).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its size in the store.
    pub fn len_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

impl Repository {
    /// Seals `plaintext` and stores it at `key`, create-only. Returns the
    /// stored size.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key holds other content; store errors.
    ///
    /// # Cancel safety
    /// Safe: the object is either written whole or not at all.
    pub async fn put_sealed(&self, key: &str, plaintext: Vec<Bytes>) -> Result<u64, Error> {
        self.put_sealed_with(key, plaintext, self.seal).await
    }

    /// [`Repository::put_sealed`] with other seal options (e.g. no compression
    /// for data the server already compressed).
    ///
    /// # Errors
    /// As [`Repository::put_sealed`].
    ///
    /// # Cancel safety
    /// Safe: the object is either written whole or not at all.
    pub async fn put_sealed_with(
        &self,
        key: &str,
        plaintext: Vec<Bytes>,
        seal: SealOptions,
    ) -> Result<u64, Error> {
        self.settled_policy().await?;
        let object = self.seal(key, &plaintext, Some(seal)).await;
        self.put_prepared(&object, &plaintext).await
    }

    /// Seals `plaintext` for `key` on the blocking pool (with `seal`, or the
    /// repository's options), drawing its salt: the object to store, and to
    /// store again after a failed attempt without sealing again.
    pub async fn seal(
        &self,
        key: &str,
        plaintext: &[Bytes],
        seal: Option<SealOptions>,
    ) -> SealedObject {
        let keyring = self.keyring.clone();
        let for_seal = plaintext.to_vec();
        let salt: chunk::Salt = if keyring.write_key().is_some() {
            rand::random()
        } else {
            [0; chunk::SALT_LEN]
        };
        // An error here comes back from the write that follows.
        let _ = self.settle_for(key).await;
        let bound_name = self.policy().bound_name(&self.physical_key(key));
        let seal = seal.unwrap_or(self.seal);
        let sealed = tokio::task::spawn_blocking(move || {
            let binding = match &bound_name {
                Some(name) => Binding::Key(name),
                None => Binding::Unbound,
            };
            chunk::seal_bound(&for_seal, &seal, keyring.write_key(), salt, binding)
        })
        .await
        .expect("sealing does not panic");
        SealedObject {
            key: key.to_string(),
            bytes: Bytes::from(sealed),
        }
    }

    /// Stores `object`, create-only; `plaintext` is what it seals, to tell
    /// a retry of this write (the same plaintext is there: success) from a
    /// conflict. Returns the stored size.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key holds other content; store errors.
    ///
    /// # Cancel safety
    /// Safe: the object is either written whole or not at all.
    pub async fn put_prepared(
        &self,
        object: &SealedObject,
        plaintext: &[Bytes],
    ) -> Result<u64, Error> {
        let key = object.key.as_str();
        let size = object.bytes.len() as u64;
        match self
            .put_create(key, PutPayload::from(object.bytes.clone()))
            .await
        {
            Ok(()) => Ok(size),
            Err(Error::Backend {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                let existing = self.get_opened(key).await?;
                match existing.map(|e| first_difference(plaintext, &e)) {
                    Some(None) => {
                        // A retry of a write whose sync failed: sync again.
                        self.sync_local(key).await?;
                        Ok(size)
                    }
                    Some(Some(difference)) => Err(Error::Conflict {
                        key: key.to_string(),
                        difference,
                    }),
                    None => Err(Error::Conflict {
                        key: key.to_string(),
                        difference: "it vanished after the store said it exists".into(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Seals `plaintext` and stores it at `key`, replacing what is there
    /// (the few documents walvault rewrites: a lease's heartbeat).
    ///
    /// # Errors
    /// Store errors.
    pub async fn put_sealed_replacing(&self, key: &str, plaintext: Vec<u8>) -> Result<(), Error> {
        self.settled_policy().await?;
        let pieces = vec![Bytes::from(plaintext)];
        let object = self.seal(key, &pieces, None).await;
        self.put_replacing(key, object.bytes).await
    }

    /// Writes (create-only, as every object is written), reads back and
    /// deletes `body` as it is (not sealed) at the probe object `key`:
    /// whether the store keeps what it is given, whatever the keys or
    /// `walvault.json` say.
    ///
    /// # Errors
    /// Store errors.
    pub async fn probe_round_trip(&self, key: &str, body: Bytes) -> Result<bool, Error> {
        self.put_create(key, PutPayload::from(body.clone())).await?;
        let back = self.get_raw(key).await?;
        self.delete(key).await?;
        Ok(back.is_some_and(|b| b == body))
    }

    /// Stores `bytes` at `key` as they are, replacing what is there.
    pub(in crate::storage) async fn put_replacing(
        &self,
        key: &str,
        bytes: Bytes,
    ) -> Result<(), Error> {
        self.settle_for(key).await?;
        RequestCounts::count(&self.requests.put);
        self.store
            .put_opts(
                &self.path(key),
                PutPayload::from(bytes),
                PutOptions {
                    mode: PutMode::Overwrite,
                    ..Default::default()
                },
            )
            .await
            .map_err(|source| Error::Backend {
                key: key.to_string(),
                source,
            })?;
        self.sync_local(key).await
    }

    /// Whether the store refuses a create-only write over an existing
    /// object, as walvault's integrity checks need: probed once per
    /// repository (a probe object written twice, then deleted). `false`
    /// means the store ignored the condition; from then on every write
    /// checks for an existing object first, and the caller should say so.
    ///
    /// # Errors
    /// Store errors while probing.
    pub async fn probe_create_only(&self) -> Result<bool, Error> {
        if let Some(honoured) = self.create_only.get() {
            return Ok(*honoured);
        }
        let key = format!("{}{:016x}", layout::PROBE_PREFIX, rand::random::<u64>());
        let path = self.path(&key);
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        RequestCounts::count(&self.requests.put);
        let first = self
            .store
            .put_opts(&path, PutPayload::from_static(b"1"), create())
            .await;
        let second = match first {
            Err(object_store::Error::NotImplemented) => None,
            Err(source) => return Err(Error::Backend { key, source }),
            Ok(_) => {
                RequestCounts::count(&self.requests.put);
                Some(
                    self.store
                        .put_opts(&path, PutPayload::from_static(b"2"), create())
                        .await,
                )
            }
        };
        let honoured = match second {
            None => false,
            Some(second) => match second {
                Ok(_) => false,
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => true,
                Err(source) => {
                    let _ = self.delete(&key).await;
                    return Err(Error::Backend { key, source });
                }
            },
        };
        self.delete(&key).await?;
        let _ = self.create_only.set(honoured);
        Ok(honoured)
    }

    pub(in crate::storage) async fn put_create(
        &self,
        key: &str,
        payload: PutPayload,
    ) -> Result<(), Error> {
        let after = BASE_REQUEST_TIMEOUT
            + TIMEOUT_PER_MIB * (payload.content_length() / (1 << 20) + 1) as u32;
        if self.create_only.get() == Some(&false) {
            return self.put_after_check(key, payload).await;
        }
        let mut opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        if let Some(class) = self.storage_class(key) {
            opts.attributes.insert(
                object_store::Attribute::StorageClass,
                object_store::AttributeValue::from(class.to_string()),
            );
        }
        self.settle_for(key).await?;
        let path = self.path(key);
        RequestCounts::count(&self.requests.put);
        if let Some(written) = self.put_local_create(key, payload.clone()).await {
            written?;
            return self.sync_local(key).await;
        }
        match tokio::time::timeout(after, self.store.put_opts(&path, payload.clone(), opts)).await {
            Ok(Ok(_)) => self.sync_local(key).await,
            // Stores without conditional writes: check for an existing object, then write.
            Ok(Err(object_store::Error::NotImplemented)) => {
                let _ = self.create_only.set(false);
                self.put_after_check(key, payload).await
            }
            Ok(Err(source)) => Err(Error::Backend {
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                key: key.to_string(),
                after,
            }),
        }
    }

    /// Writes `key` unless something is there already, for stores that do
    /// not honour create-only writes (a race with another writer stays
    /// possible there; `walvault check` reports such stores).
    async fn put_after_check(&self, key: &str, payload: PutPayload) -> Result<(), Error> {
        if self.get_raw(key).await?.is_some() {
            return Err(Error::Backend {
                key: key.to_string(),
                source: object_store::Error::AlreadyExists {
                    path: key.to_string(),
                    source: "exists".into(),
                },
            });
        }
        self.settle_for(key).await?;
        let path = self.path(key);
        let mut opts = PutOptions::default();
        if let Some(class) = self.storage_class(key) {
            opts.attributes.insert(
                object_store::Attribute::StorageClass,
                object_store::AttributeValue::from(class.to_string()),
            );
        }
        RequestCounts::count(&self.requests.put);
        self.store
            .put_opts(&path, payload, opts)
            .await
            .map_err(|source| Error::Backend {
                key: key.to_string(),
                source,
            })?;
        self.sync_local(key).await
    }

    /// The storage class for a new object at `key`, if one is set.
    fn storage_class(&self, key: &str) -> Option<&str> {
        if key.starts_with(layout::WAL_PREFIX) {
            self.storage_classes.wal.as_deref()
        } else if key.starts_with(layout::BACKUPS_PREFIX) {
            self.storage_classes.backup.as_deref()
        } else {
            None
        }
    }
}

/// Where `ours` (in pieces) and `theirs` first differ, for the conflict
/// error: `None` when they are the same.
fn first_difference(ours: &[Bytes], theirs: &[u8]) -> Option<String> {
    let total: usize = ours.iter().map(Bytes::len).sum();
    let mut offset = 0;
    for piece in ours {
        let end = (offset + piece.len()).min(theirs.len());
        if let Some(i) = piece
            .iter()
            .zip(&theirs[offset.min(end)..end])
            .position(|(a, b)| a != b)
        {
            return Some(format!(
                "{} bytes stored, {total} to store; first difference at byte {}",
                theirs.len(),
                offset + i
            ));
        }
        offset += piece.len();
    }
    (total != theirs.len()).then(|| format!("{} bytes stored, {total} to store", theirs.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_located() {
        let ours = [Bytes::from_static(b"abc"), Bytes::from_static(b"def")];
        assert_eq!(first_difference(&ours, b"abcdef"), None);
        assert_eq!(
            first_difference(&ours, b"abcdXf").as_deref(),
            Some("6 bytes stored, 6 to store; first difference at byte 4")
        );
        assert_eq!(
            first_difference(&ours, b"abcd").as_deref(),
            Some("4 bytes stored, 6 to store")
        );
        assert_eq!(
            first_difference(&ours, b"abcdefgh").as_deref(),
            Some("8 bytes stored, 6 to store")
        );
    }
}

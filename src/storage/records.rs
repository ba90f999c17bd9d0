//! The repository's records: backups' `backup.json`, pins and expire
//! records (see [`crate::format::retention`]), the WAL index, marks and
//! drills. Sealed and bound like every object.

use crate::format::KeyId;
use crate::format::backup::BackupMetadata;
use crate::format::drill::DrillRecord;
use crate::format::mark::Mark;
use crate::format::retention::{ExpireRecord, Pin};
use crate::format::wal_index::WalIndex;

use super::{Error, Repository, layout};

/// The backups of a repository as a reader holding some of its keys sees
/// them.
#[derive(Clone, Debug, Default)]
pub struct BackupList {
    /// The backups it can open, oldest first.
    pub backups: Vec<BackupMetadata>,
    /// The backups sealed with a key it lacks, oldest first.
    pub locked: Vec<LockedBackup>,
}

/// A backup whose `backup.json` is sealed with a key the reader lacks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LockedBackup {
    /// The backup.
    pub id: String,
    /// The key it needs.
    pub key_id: KeyId,
}

impl Repository {
    /// Reads every `backup.json`, oldest first. Strict: one that does not
    /// open fails the whole listing (what deletes, as expire does, must see
    /// every backup).
    ///
    /// # Errors
    /// Store or integrity errors (naming the object).
    pub async fn list_backups(&self) -> Result<Vec<BackupMetadata>, Error> {
        let list = self.read_backups(false).await?;
        Ok(list.backups)
    }

    /// Reads every `backup.json` this keyring opens, oldest first, and
    /// names the ones sealed with a key it lacks (a host given only the
    /// newer key after a rotation): readers show those and go on.
    ///
    /// # Errors
    /// Store or integrity errors other than a missing key (naming the object).
    pub async fn list_backups_readable(&self) -> Result<BackupList, Error> {
        self.read_backups(true).await
    }

    async fn read_backups(&self, skip_locked: bool) -> Result<BackupList, Error> {
        let objects = self.list(layout::BACKUPS_PREFIX).await?;
        let mut out = Vec::new();
        let mut locked = Vec::new();
        for o in objects {
            let Some(id) = layout::backup_id_of(&o.key) else {
                continue;
            };
            if o.key != layout::backup_json_key(id) {
                continue;
            }
            let bytes = match self.get_opened(&o.key).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue,
                Err(Error::Corrupt {
                    source: crate::format::chunk::Error::UnknownKey { key_id, .. },
                    ..
                }) if skip_locked => {
                    locked.push(LockedBackup {
                        id: id.to_string(),
                        key_id,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let meta: BackupMetadata =
                serde_json::from_slice(&bytes).map_err(|e| Error::BadManifest {
                    key: o.key.clone(),
                    reason: e.to_string(),
                })?;
            self.check_backup_identity(&o.key, id, &meta)?;
            out.push(meta);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        locked.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(BackupList {
            backups: out,
            locked,
        })
    }

    /// Refuses a `backup.json` that is not this repository's backup `id`:
    /// another id inside, or another cluster's or segment size than
    /// `walvault.json` says (a backup of another cluster sealed with the
    /// same key: restoring it would bring back the other cluster).
    fn check_backup_identity(
        &self,
        key: &str,
        id: &str,
        meta: &BackupMetadata,
    ) -> Result<(), Error> {
        let bad = |reason: String| {
            Err(Error::BadManifest {
                key: key.to_string(),
                reason,
            })
        };
        meta.check_version().map_err(|reason| Error::BadManifest {
            key: key.to_string(),
            reason,
        })?;
        if meta.id != id {
            return bad(format!("it describes backup {}, not {id}", meta.id));
        }
        let Some(stored) = self.stored_identity() else {
            return Ok(());
        };
        // A backup of a system held before an upgrade is checked against
        // that system.
        let Some(identity) = stored.system_view(&meta.system_identifier) else {
            return bad(format!(
                "it is a backup of system identifier {}, but the repository belongs to {}: another cluster's backup",
                meta.system_identifier,
                stored
                    .systems()
                    .into_iter()
                    .map(|(id, _, _)| id)
                    .rev()
                    .collect::<Vec<_>>()
                    .join(", before that ")
            ));
        };
        if meta.wal_segment_size != identity.wal_segment_size {
            return bad(format!(
                "it is a backup with WAL segments of {} bytes, but the repository holds segments of {}",
                meta.wal_segment_size, identity.wal_segment_size
            ));
        }
        Ok(())
    }

    /// Every pin, by backup id (lapsed ones included).
    ///
    /// # Errors
    /// Store errors; a pin that does not open or parse, naming it.
    pub async fn read_pins(&self) -> Result<Vec<Pin>, Error> {
        let mut pins = Vec::new();
        for o in self.list(layout::PINS_PREFIX).await? {
            let Some(id) = layout::pin_backup_id(&o.key).map(str::to_string) else {
                continue;
            };
            let Some(pin) = self.read_document::<Pin>(&o.key).await? else {
                continue;
            };
            if pin.backup_id != id {
                return Err(Error::BadDocument {
                    key: o.key,
                    reason: format!("it pins backup {}, not {id}", pin.backup_id),
                });
            }
            pins.push(pin);
        }
        Ok(pins)
    }

    /// Stores `pin`, replacing the backup's earlier pin.
    ///
    /// # Errors
    /// Store errors.
    pub async fn write_pin(&self, pin: &Pin) -> Result<(), Error> {
        let key = layout::pin_key(&pin.backup_id);
        self.delete(&key).await?;
        let body = serde_json::to_vec_pretty(pin).expect("a pin serializes");
        self.put_sealed(&key, vec![body.into()]).await?;
        Ok(())
    }

    /// Removes a backup's pin (missing is fine).
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete_pin(&self, backup_id: &str) -> Result<(), Error> {
        self.delete(&layout::pin_key(backup_id)).await
    }

    /// The newest expire record and its number, if any run stored one.
    ///
    /// # Errors
    /// Store errors; a record that does not open or parse, naming it.
    pub async fn latest_expire_record(&self) -> Result<Option<(u64, ExpireRecord)>, Error> {
        let newest = self
            .list(layout::EXPIRE_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| layout::expire_record_seq(&o.key).map(|seq| (seq, o.key)))
            .max();
        let Some((seq, key)) = newest else {
            return Ok(None);
        };
        Ok(self
            .read_document::<ExpireRecord>(&key)
            .await?
            .map(|r| (seq, r)))
    }

    /// Stores the record of an expire run as number `seq` and removes the
    /// older ones (the newest carries everything a reader needs).
    ///
    /// # Errors
    /// Store errors; [`Error::Conflict`] when another run took `seq`.
    pub async fn write_expire_record(&self, seq: u64, record: &ExpireRecord) -> Result<(), Error> {
        let body = serde_json::to_vec_pretty(record).expect("a record serializes");
        self.put_sealed(&layout::expire_record_key(seq), vec![body.into()])
            .await?;
        let older: Vec<String> = self
            .list(layout::EXPIRE_PREFIX)
            .await?
            .into_iter()
            .filter(|o| layout::expire_record_seq(&o.key).is_some_and(|s| s < seq))
            .map(|o| o.key)
            .collect();
        self.delete_many(&older).await?;
        Ok(())
    }

    /// The WAL index written with expire record `seq`; `None` when there is
    /// none, or it belongs to another run (an interrupted or older one).
    ///
    /// # Errors
    /// Store errors; an index that does not open, parse or hold together.
    pub async fn read_wal_index(
        &self,
        seq: u64,
        segment_size_bytes: u64,
    ) -> Result<Option<WalIndex>, Error> {
        let Some(index) = self.read_document::<WalIndex>(layout::WAL_INDEX).await? else {
            return Ok(None);
        };
        index
            .check(segment_size_bytes)
            .map_err(|reason| Error::BadDocument {
                key: layout::WAL_INDEX.to_string(),
                reason,
            })?;
        Ok((index.expire_seq == seq).then_some(index))
    }

    /// Stores `index`, replacing the previous one.
    ///
    /// # Errors
    /// Store errors.
    pub async fn write_wal_index(&self, index: &WalIndex) -> Result<(), Error> {
        self.delete(layout::WAL_INDEX).await?;
        let body = serde_json::to_vec(index).expect("an index serializes");
        self.put_sealed(layout::WAL_INDEX, vec![body.into()])
            .await?;
        Ok(())
    }

    /// Every mark, oldest first.
    ///
    /// # Errors
    /// Store errors; a mark that does not open or parse, naming it.
    pub async fn read_marks(&self) -> Result<Vec<Mark>, Error> {
        let mut marks = Vec::new();
        for o in self.list(layout::MARKS_PREFIX).await? {
            if let Some(mark) = self.read_document::<Mark>(&o.key).await? {
                if layout::mark_key(&mark.name) != o.key {
                    return Err(Error::BadDocument {
                        key: o.key,
                        reason: format!("it describes mark {:?}", mark.name),
                    });
                }
                marks.push(mark);
            }
        }
        marks.sort_by_key(|m| m.lsn);
        Ok(marks)
    }

    /// Stores a mark (create-only: a name is used once).
    ///
    /// # Errors
    /// Store errors; [`Error::Conflict`] when the name is taken.
    pub async fn write_mark(&self, mark: &Mark) -> Result<(), Error> {
        let body = serde_json::to_vec_pretty(mark).expect("a mark serializes");
        self.put_sealed(&layout::mark_key(&mark.name), vec![body.into()])
            .await?;
        Ok(())
    }

    /// The newest drill record, if any (ids sort by time: compared as ids,
    /// since `T-01.json` sorts before `T.json` as a key).
    ///
    /// # Errors
    /// Store errors; a record that does not open or parse, naming it.
    pub async fn latest_drill(&self) -> Result<Option<DrillRecord>, Error> {
        let newest = self
            .list(layout::DRILLS_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| layout::drill_id(&o.key).map(str::to_string))
            .max();
        match newest {
            Some(id) => self.read_document(&layout::drill_key(&id)).await,
            None => Ok(None),
        }
    }

    /// Stores a drill record under a new id from its time.
    ///
    /// # Errors
    /// Store errors.
    pub async fn write_drill(&self, record: &DrillRecord) -> Result<(), Error> {
        let body = serde_json::to_vec_pretty(record).expect("a record serializes");
        let base = record.time.format("%Y%m%dT%H%M%SZ").to_string();
        first_free_id(&base, |id| {
            let body = body.clone();
            async move {
                match self
                    .put_sealed(&layout::drill_key(&id), vec![body.into()])
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(Error::Conflict { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
        Ok(())
    }

    pub(crate) async fn read_document<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, Error> {
        let Some(bytes) = self.get_opened(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::BadDocument {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }
}

/// The first of the ids made from `base` ([`layout::numbered_id`]) that
/// `claim` takes (it answers whether the id was free and is now used);
/// `None` when all are taken.
///
/// # Errors
/// The first error of `claim`.
pub async fn first_free_id<F, Fut>(base: &str, mut claim: F) -> Result<Option<String>, Error>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    for n in 0..layout::SAME_SECOND_IDS {
        let id = layout::numbered_id(base, n);
        if claim(id.clone()).await? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

//! The lease of a repository's one WAL writer. Two `walvault stream`s on
//! one repository would each store WAL beside the other, unnoticed (two
//! slots), or fight for one slot: the second is refused instead, with a
//! message naming the first.
//!
//! A holder writes `leases/stream/{holder}.json` once (create-only: its
//! store time orders the holders; plain JSON, since it is written before a
//! new repository's `walvault.json` says how objects are bound, and an
//! edited lease can only refuse a writer, as a deleted object can) and rewrites `{holder}.alive` every
//! [`LEASE_HEARTBEAT`]. A lease holds while its heartbeat is younger than
//! [`LEASE_TTL`] by the store's own clock: ages are differences of store
//! times (the newest heartbeat is "now"), so a host clock that is off does
//! not matter. Of the live holders the first one holds; the others give
//! up. A holder on the same host with the same slot whose process is gone
//! (a restart after a crash, a container's pid 1 again) is not live.

use std::time::Duration;

use crate::format::lease::{LEASE_VERSION, Lease};

use super::{Error, Repository, layout};

/// How long a lease holds without a heartbeat, by the store's clock.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often the holder rewrites its heartbeat: a few beats per TTL.
pub const LEASE_HEARTBEAT: Duration = Duration::from_secs(15);

/// One holder's objects, as a listing shows them.
#[derive(Debug)]
struct Holder {
    id: String,
    created: Option<chrono::DateTime<chrono::Utc>>,
    beat: chrono::DateTime<chrono::Utc>,
}

impl Repository {
    /// Takes the writer's lease for `me`, or refuses because another live
    /// writer holds it.
    ///
    /// # Errors
    /// [`Error::Leased`] naming the holder; store errors.
    pub async fn take_lease(&self, me: &Lease) -> Result<(), Error> {
        let body = serde_json::to_vec_pretty(me).expect("a lease serializes");
        self.put_create(&layout::lease_key(&me.holder), body.into())
            .await?;
        self.beat(me).await?;
        match self.lease_holder(me).await {
            Ok(None) => Ok(()),
            Ok(Some(refusal)) => {
                self.release_lease(me).await;
                Err(refusal)
            }
            Err(e) => {
                self.release_lease(me).await;
                Err(e)
            }
        }
    }

    /// Rewrites `me`'s heartbeat and checks it still holds the lease.
    ///
    /// # Errors
    /// [`Error::Leased`] when another writer holds it now (after this one
    /// could not beat for longer than [`LEASE_TTL`]); store errors.
    pub async fn renew_lease(&self, me: &Lease) -> Result<(), Error> {
        self.beat(me).await?;
        match self.lease_holder(me).await? {
            None => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    /// Gives the lease up (best effort: an expired lease is as good).
    pub async fn release_lease(&self, me: &Lease) {
        let _ = self
            .delete_many(&[
                layout::lease_heartbeat_key(&me.holder),
                layout::lease_key(&me.holder),
            ])
            .await;
    }

    async fn beat(&self, me: &Lease) -> Result<(), Error> {
        self.put_sealed_replacing(&layout::lease_heartbeat_key(&me.holder), b"alive".to_vec())
            .await
    }

    /// The live holder of the writer's lease, if any: for a process that
    /// stores WAL only where no writer does (a standalone backup beside a
    /// sidecar). The store's "now" is the time of a probe object written
    /// for the purpose, so neither clock of the hosts matters.
    ///
    /// # Errors
    /// Store errors.
    pub async fn live_lease_holder(&self) -> Result<Option<Lease>, Error> {
        let now = self.store_now().await?;
        let ttl = chrono::Duration::from_std(LEASE_TTL).expect("a short duration");
        let mut live: Vec<Holder> = self
            .lease_holders()
            .await?
            .into_iter()
            .filter(|h| h.created.is_some() && now - h.beat < ttl)
            .collect();
        live.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        for h in live {
            if let Some(lease) = self.read_lease(&h.id).await? {
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    /// Every holder the listing shows, with its document's and newest
    /// object's store times.
    async fn lease_holders(&self) -> Result<Vec<Holder>, Error> {
        let mut holders: Vec<Holder> = Vec::new();
        for o in self.list(layout::LEASE_PREFIX).await? {
            let Some((id, is_document)) = layout::lease_holder(&o.key) else {
                continue;
            };
            let h = match holders.iter_mut().find(|h| h.id == id) {
                Some(h) => h,
                None => {
                    holders.push(Holder {
                        id: id.to_string(),
                        created: None,
                        beat: o.last_modified,
                    });
                    holders.last_mut().expect("just pushed")
                }
            };
            if is_document {
                h.created = Some(o.last_modified);
            }
            h.beat = h.beat.max(o.last_modified);
        }
        Ok(holders)
    }

    /// `None` when `me` holds the lease; else the refusal naming who does.
    /// Dead holders' objects are removed on the way.
    async fn lease_holder(&self, me: &Lease) -> Result<Option<Error>, Error> {
        let holders = self.lease_holders().await?;
        // The store's "now": the newest heartbeat, ours just written.
        let Some(now) = holders.iter().map(|h| h.beat).max() else {
            return Ok(None);
        };
        let ttl = chrono::Duration::from_std(LEASE_TTL).expect("a short duration");
        let mut live = Vec::new();
        for h in holders {
            let created = h.created;
            if created.is_none() || now - h.beat >= ttl {
                self.drop_dead_holder(&h.id, &me.holder).await;
                continue;
            }
            live.push(h);
        }
        live.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        for h in live {
            if h.id == me.holder {
                return Ok(None);
            }
            let Some(lease) = self.read_lease(&h.id).await? else {
                continue;
            };
            if is_predecessor(&lease, me) {
                self.drop_dead_holder(&h.id, &me.holder).await;
                continue;
            }
            return Ok(Some(Error::Leased {
                holder: lease.describe(),
                key: layout::lease_key(&h.id),
            }));
        }
        Ok(None)
    }

    /// Holder `id`'s lease document, checked: its version, and the holder
    /// it names is the one its key names.
    async fn read_lease(&self, id: &str) -> Result<Option<Lease>, Error> {
        let key = layout::lease_key(id);
        let Some(bytes) = self.get_raw(&key).await? else {
            return Ok(None);
        };
        let bad = |reason: String| Error::BadDocument {
            key: key.clone(),
            reason,
        };
        let lease: Lease = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if lease.version != LEASE_VERSION {
            return Err(bad(format!("unknown lease version {}", lease.version)));
        }
        if lease.holder != id {
            return Err(bad(format!("names holder {:?}", lease.holder)));
        }
        Ok(Some(lease))
    }

    async fn drop_dead_holder(&self, id: &str, me: &str) {
        if id != me {
            let _ = self
                .delete_many(&[layout::lease_heartbeat_key(id), layout::lease_key(id)])
                .await;
        }
    }
}

/// Whether `other` is an earlier run of `me`: the same host and slot, and
/// its process is ours or gone.
fn is_predecessor(other: &Lease, me: &Lease) -> bool {
    other.host == me.host
        && other.slot == me.slot
        && (other.pid == me.pid || !std::path::Path::new(&format!("/proc/{}", other.pid)).exists())
}

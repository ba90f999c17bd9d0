//! The store's own clock. Ages of objects (a lease's heartbeat, a running
//! backup's newest object) are differences of the store's times: a host
//! whose clock is minutes off must neither take a live holder for dead nor
//! a dead one for live.

use super::{Error, Repository, layout};

impl Repository {
    /// The store's "now": the time the store gives a probe object written
    /// for the purpose (then deleted).
    ///
    /// # Errors
    /// Store errors, or a probe the listing does not show.
    pub async fn store_now(&self) -> Result<chrono::DateTime<chrono::Utc>, Error> {
        let probe = format!(
            "{}clock-{:016x}",
            layout::PROBE_PREFIX,
            rand::random::<u64>()
        );
        self.put_sealed_replacing(&probe, b"now".to_vec()).await?;
        // Listings take whole path segments as prefixes: list the folder.
        let listed = self.list(layout::PROBE_PREFIX).await;
        let _ = self.delete(&probe).await;
        listed?
            .into_iter()
            .filter(|o| o.key == probe)
            .map(|o| o.last_modified)
            .max()
            .ok_or_else(|| Error::Backend {
                key: probe.clone(),
                source: object_store::Error::NotFound {
                    path: probe,
                    source: "the clock probe was written but is not listed".into(),
                },
            })
    }
}

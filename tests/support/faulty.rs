//! A store wrapper that injects faults on command, around a real store:
//! failing requests, stalled requests (until released), writes of some keys
//! held back while later ones complete (reordering), reads returned with a
//! byte flipped, create-only writes ignored as some S3-compatible stores
//! do, listed times shifted as by a store clock off the host's.
//! Everything else goes to the store underneath unchanged.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tokio::sync::Notify;

/// The faults to inject; change them while the store is in use.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail this many of the next writes with a retryable error.
    pub fail_writes: AtomicU32,
    /// Stall every request until [`Faults::release`].
    pub stalled: AtomicBool,
    /// Treat create-only writes as plain writes (replace what is there).
    pub ignore_create_only: AtomicBool,
    /// Writes seen (for tests that wait for traffic).
    pub writes: AtomicU32,
    /// Hold back writes of keys containing this text until released, while
    /// other writes go on: uploads then complete out of order.
    pub hold_keys: std::sync::Mutex<Option<String>>,
    /// Hold back writes of keys ending in this text (one object, not the
    /// objects named after it: a segment, not its deltas).
    pub hold_key_ending: std::sync::Mutex<Option<String>>,
    /// Flip a byte in the middle of every object read.
    pub corrupt_reads: AtomicBool,
    /// Seconds added to every listed object's time: a store whose clock
    /// is that far off the host's.
    pub clock_offset_secs: std::sync::atomic::AtomicI64,
    /// The key and bytes of every write failed on purpose.
    pub failed_writes: std::sync::Mutex<Vec<(String, bytes::Bytes)>>,
    released: Notify,
}

impl Faults {
    /// Lets stalled and held requests go on and stops stalling and holding.
    pub fn release(&self) {
        self.stalled.store(false, SeqCst);
        *self.hold_keys.lock().unwrap() = None;
        *self.hold_key_ending.lock().unwrap() = None;
        self.released.notify_waiters();
    }

    fn shifted(&self, mut meta: ObjectMeta) -> ObjectMeta {
        meta.last_modified += chrono::Duration::seconds(self.clock_offset_secs.load(SeqCst));
        meta
    }

    fn holds(&self, location: &Path) -> bool {
        self.hold_keys
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|k| location.as_ref().contains(k))
            || self
                .hold_key_ending
                .lock()
                .unwrap()
                .as_deref()
                .is_some_and(|k| location.as_ref().ends_with(k))
    }

    async fn hold(&self, location: &Path) {
        while self.holds(location) {
            let wait = self.released.notified();
            if !self.holds(location) {
                break;
            }
            wait.await;
        }
    }

    async fn gate(&self) {
        while self.stalled.load(SeqCst) {
            let wait = self.released.notified();
            if !self.stalled.load(SeqCst) {
                break;
            }
            wait.await;
        }
    }
}

/// A store with injectable faults around `inner`.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    pub faults: Arc<Faults>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            faults: Arc::new(Faults::default()),
        }
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: "injected failure".into(),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        self.faults.gate().await;
        self.faults.hold(location).await;
        self.faults.writes.fetch_add(1, SeqCst);
        let failing = self
            .faults
            .fail_writes
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            let bytes: bytes::Bytes = payload.into_iter().flatten().collect::<Vec<u8>>().into();
            let failed = (location.as_ref().to_string(), bytes);
            self.faults.failed_writes.lock().unwrap().push(failed);
            return Err(injected());
        }
        if self.faults.ignore_create_only.load(SeqCst) && opts.mode == PutMode::Create {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.faults.gate().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.faults.gate().await;
        let result = self.inner.get_opts(location, options).await?;
        if !self.faults.corrupt_reads.load(SeqCst) {
            return Ok(result);
        }
        let (meta, range, attributes) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
        );
        let mut bytes = result.bytes().await?.to_vec();
        if !bytes.is_empty() {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x20;
        }
        let payload = futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) }).boxed();
        Ok(GetResult {
            payload: object_store::GetResultPayload::Stream(payload),
            meta,
            range,
            attributes,
        })
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.faults.gate().await;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let faults = self.faults.clone();
        let shift = self.faults.clone();
        let mut inner = Some(self.inner.list(prefix));
        futures::stream::once(async move { faults.gate().await })
            .flat_map(move |()| inner.take().expect("listed once"))
            .map(move |m| m.map(|m| shift.shifted(m)))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.faults.gate().await;
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects = listed
            .objects
            .into_iter()
            .map(|m| self.faults.shifted(m))
            .collect();
        Ok(listed)
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.faults.gate().await;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.faults.gate().await;
        self.inner.copy_if_not_exists(from, to).await
    }
}

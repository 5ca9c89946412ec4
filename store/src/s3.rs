//! The S3 backend: a store in a bucket of any S3-compatible object store
//! (AWS S3, MinIO, Ceph RGW, Garage, s3s).
//!
//! ```text
//! <prefix>/imprint-store.json          store settings
//! <prefix>/chunks/<4 hex>/<64 hex>     chunk blobs, named by digest
//! <prefix>/touch/<4 hex>/<64 hex>      empty markers: a chunk's last reuse
//! <prefix>/images/<uuid>/disk<N>.fidx  per-disk indexes
//! <prefix>/images/<uuid>/manifest      written last: the image exists
//! <prefix>/writers/<id>.json           captures in progress
//! ```
//!
//! How the [`crate::backend`] contracts hold on an object store:
//! - Every PUT is atomic (S3 shows the whole object or the old one), so a
//!   reader never sees a prefix of a chunk, index or manifest.
//! - Objects cannot have their timestamp refreshed, so a touch writes an
//!   empty *marker* object and a chunk's age is the newer of its own and its
//!   marker's `Last-Modified`. Touch writes the marker first, then checks the
//!   chunk is there; GC reads the chunk, deletes it, then re-checks the
//!   marker and puts the bytes back when a touch landed meanwhile. With
//!   S3's read-after-write consistency a touch that reported "present" is
//!   always seen by that re-check.
//! - Dedup does not rely on `If-None-Match`: a capture touches (marker PUT +
//!   HEAD) before it compresses, and only absent chunks are uploaded. Insert
//!   still asks for put-if-absent; a server that ignores it (Garage)
//!   overwrites the chunk with the same bytes, which is harmless because the
//!   name is the digest of the content.
//! - Ages are the server's clock; hosts that run GC should keep their
//!   clocks within the GC grace of the object store's.
//!
//! Objects larger than the multipart threshold (large disks' indexes) go up
//! in parts. Requests are retried with exponential backoff on 5xx, timeouts
//! and dropped connections (object_store's retry layer).
//!
//! The data path is synchronous (worker threads); this backend runs its
//! requests on a small tokio runtime of its own, so it works from plain
//! threads and from `spawn_blocking` alike.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    aws::AmazonS3Builder, path::Path as ObjPath,
};

use crate::{
    ChunkDigest, Error, ErrorKind, ImageId, Result,
    backend::{ChunkInfo, ChunkStore, ImageStore, Inserted, WriterInfo, WriterRecord},
    format::STORE_CONFIG_FILE,
};

const MANIFEST_FILE: &str = "manifest";

/// Where and how to reach the bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix of the store inside the bucket ("" for the bucket root).
    pub prefix: String,
    /// Endpoint URL (`http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Region (any value for most non-AWS servers).
    pub region: String,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: usize,
    /// Size of each part of a multipart upload (S3 wants ≥ 5 MiB).
    pub part_size: usize,
    /// Retries of a failed request (5xx, timeout, connection error).
    pub max_retries: usize,
    /// First retry delay; doubles up to 5 s.
    pub initial_backoff: Duration,
    /// Give up on one request after this long, retries included.
    pub request_timeout: Duration,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Options {
    /// Options for `s3://bucket/prefix`, with defaults for the rest.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            max_retries: 6,
            initial_backoff: Duration::from_millis(100),
            request_timeout: Duration::from_secs(60),
        }
    }

    /// Parse `s3://bucket[/prefix][?endpoint=URL&region=R]`; endpoint and
    /// region not in the URL, and the credentials, come from
    /// `AWS_ENDPOINT_URL`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Sites on different
    /// S3 servers name theirs in the URL, so every host reaches the same
    /// bucket under one name.
    pub fn from_url_and_env(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::invalid(format!("{url:?} is not an s3:// URL (s3://bucket/prefix)"))
        })?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut from_url: (Option<String>, Option<String>) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) if !v.is_empty() => from_url.0 = Some(v.to_string()),
                Some(("region", v)) if !v.is_empty() => from_url.1 = Some(v.to_string()),
                _ => {
                    return Err(Error::invalid(format!(
                        "{url:?}: unknown setting {pair:?} (endpoint=URL, region=NAME)"
                    )));
                }
            }
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::invalid(format!("{url:?} names no bucket")));
        }
        let mut o = Self::new(bucket, prefix);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        o.endpoint = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT"));
        if let Some(r) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
            o.region = r;
        }
        if let Some(ep) = from_url.0 {
            o.endpoint = Some(ep);
        }
        if let Some(r) = from_url.1 {
            o.region = r;
        }
        o.access_key_id = env("AWS_ACCESS_KEY_ID");
        o.secret_access_key = env("AWS_SECRET_ACCESS_KEY");
        // Per-bucket keys (IMPRINT_S3_CREDENTIALS) beat the environment's.
        crate::s3_keys::apply_configured(&mut o)?;
        Ok(o)
    }

    /// An async object_store client for the bucket, with these settings
    /// (endpoint, region, keys, retries, timeouts). The store uses it; so
    /// does anything else that reads the same bucket (imports from URLs).
    pub fn client(&self) -> Result<object_store::aws::AmazonS3> {
        let url = self.url();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_retry(RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: self.initial_backoff,
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: self.max_retries,
                retry_timeout: self.request_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(self.request_timeout),
            );
        if let Some(ep) = &self.endpoint {
            b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(k), Some(s)) => b = b.with_access_key_id(k).with_secret_access_key(s),
            (None, None) => {}
            _ => {
                return Err(Error::invalid(format!(
                    "{url}: give both an access key id and a secret access key, or neither"
                )));
            }
        }
        b.build()
            .map_err(|e| Error::invalid(format!("{url}: bad S3 settings: {e}")))
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Request counts, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct S3Stats {
    /// PUTs (objects and markers; a multipart upload counts once).
    pub puts: AtomicU64,
    /// Bytes uploaded.
    pub bytes_put: AtomicU64,
    /// Multipart uploads completed.
    pub multipart_uploads: AtomicU64,
    /// GETs.
    pub gets: AtomicU64,
}

/// A store in an S3 bucket.
pub struct S3Store {
    opts: S3Options,
    client: Arc<dyn ObjectStore>,
    rt: Option<tokio::runtime::Runtime>,
    stats: Arc<S3Stats>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.opts.url())
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this may run inside an async context.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Map an object store error to a store error; `what` says what was done.
fn map_err(what: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => ErrorKind::Conflict,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        E::InvalidPath { .. } => ErrorKind::InvalidArgument,
        _ => {
            let text = e.to_string();
            if text.contains("error sending request")
                || text.contains("connect")
                || text.contains("timed out")
                || text.contains("retries")
            {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Io
            }
        }
    };
    Error::new(kind, format!("{what}: {e}"))
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3Store {
    /// Connect to the bucket and check it can be used: the bucket exists
    /// and the credentials are accepted. Errors say which.
    pub fn connect(opts: S3Options) -> Result<Self> {
        let client = opts.client()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imprint-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the S3 client runtime", e))?;
        let store = Self {
            opts,
            client: Arc::new(client),
            rt: Some(rt),
            stats: Arc::new(S3Stats::default()),
        };
        store.check_bucket()?;
        Ok(store)
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &S3Options {
        &self.opts
    }

    /// Request counts so far.
    pub fn stats(&self) -> &S3Stats {
        &self.stats
    }

    /// One listing of the prefix: tells a missing bucket, refused
    /// credentials and an unreachable server apart, before any real work.
    fn check_bucket(&self) -> Result<()> {
        let client = self.client.clone();
        let prefix = self.key("");
        let url = self.opts.url();
        let endpoint = self
            .opts
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS S3".into());
        self.run(async move { client.list_with_delimiter(Some(&prefix)).await })
            .map(|_| ())
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("NoSuchBucket") || is_not_found(&e) {
                    Error::not_found(format!(
                        "{url}: bucket {:?} does not exist at {endpoint}",
                        url.trim_start_matches("s3://")
                            .split('/')
                            .next()
                            .unwrap_or_default()
                    ))
                } else if matches!(
                    e,
                    object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }
                ) || text.contains("SignatureDoesNotMatch")
                    || text.contains("InvalidAccessKeyId")
                    || text.contains("AccessDenied")
                {
                    Error::new(
                        ErrorKind::PermissionDenied,
                        format!("{url}: {endpoint} refused the credentials: {e}"),
                    )
                } else {
                    let mut err = map_err(&format!("{url}: cannot reach {endpoint}"), e);
                    if err.kind() == ErrorKind::Io {
                        err = Error::new(ErrorKind::Unavailable, err.message().to_string());
                    }
                    err
                }
            })
    }

    #[allow(
        clippy::expect_used,
        reason = "the runtime lives until drop; a task that ends without an answer panicked, and its panic is passed on"
    )]
    fn run<F, T>(&self, fut: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the store");
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("S3 request task ended without an answer")
    }

    fn key(&self, rel: &str) -> ObjPath {
        if self.opts.prefix.is_empty() {
            ObjPath::from(rel)
        } else if rel.is_empty() {
            ObjPath::from(self.opts.prefix.as_str())
        } else {
            ObjPath::from(format!("{}/{rel}", self.opts.prefix))
        }
    }

    fn chunk_key(&self, d: &ChunkDigest) -> ObjPath {
        let hex = d.to_hex();
        self.key(&format!("chunks/{}/{hex}", &hex[..4]))
    }

    fn marker_key(&self, d: &ChunkDigest) -> ObjPath {
        let hex = d.to_hex();
        self.key(&format!("touch/{}/{hex}", &hex[..4]))
    }

    fn image_key(&self, image: &ImageId, name: &str) -> ObjPath {
        self.key(&format!("images/{image}/{name}"))
    }

    fn writer_key(&self, writer_id: &str) -> Result<ObjPath> {
        if writer_id.is_empty()
            || !writer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::invalid(format!("bad writer id {writer_id:?}")));
        }
        Ok(self.key(&format!("writers/{writer_id}.json")))
    }

    fn get(&self, key: ObjPath) -> Result<Option<Bytes>> {
        let client = self.client.clone();
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let what = format!("read {}/{key}", self.opts.bucket);
        self.run(async move {
            match client.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| map_err(&what, e))
    }

    /// Last-Modified of `key`, or `None` when it is absent.
    fn head(&self, key: ObjPath) -> Result<Option<(SystemTime, u64)>> {
        let client = self.client.clone();
        let what = format!("look up {}/{key}", self.opts.bucket);
        self.run(async move {
            match client.head(&key).await {
                Ok(m) => Ok(Some((SystemTime::from(m.last_modified), m.size))),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| map_err(&what, e))
    }

    /// PUT `bytes` at `key` (multipart when large). `create` asks for
    /// put-if-absent; `Ok(false)` means the object existed.
    fn put(&self, key: ObjPath, bytes: Bytes, create: bool) -> Result<bool> {
        let client = self.client.clone();
        let what = format!("write {}/{key}", self.opts.bucket);
        let len = bytes.len();
        let multipart = !create && len > self.opts.multipart_threshold;
        let part_size = self.opts.part_size.max(1);
        let stats = self.stats.clone();
        self.run(async move {
            if multipart {
                let mut up = client.put_multipart(&key).await?;
                let mut off = 0;
                while off < len {
                    let end = (off + part_size).min(len);
                    if let Err(e) = up.put_part(PutPayload::from(bytes.slice(off..end))).await {
                        let _ = up.abort().await;
                        return Err(e);
                    }
                    off = end;
                }
                if let Err(e) = up.complete().await {
                    let _ = up.abort().await;
                    return Err(e);
                }
                stats.multipart_uploads.fetch_add(1, Ordering::Relaxed);
            } else {
                let mode = if create {
                    PutMode::Create
                } else {
                    PutMode::Overwrite
                };
                let opts = PutOptions {
                    mode,
                    ..Default::default()
                };
                match client.put_opts(&key, PutPayload::from(bytes), opts).await {
                    Ok(_) => {}
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. })
                        if create =>
                    {
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
            }
            stats.puts.fetch_add(1, Ordering::Relaxed);
            stats.bytes_put.fetch_add(len as u64, Ordering::Relaxed);
            Ok(true)
        })
        .map_err(|e| map_err(&what, e))
    }

    /// Server-side copy (no bytes through this host).
    fn server_copy(&self, from: ObjPath, to: ObjPath) -> Result<()> {
        let client = self.client.clone();
        let what = format!("copy {}/{from} to {to}", self.opts.bucket);
        self.run(async move { client.copy(&from, &to).await })
            .map_err(|e| map_err(&what, e))
    }

    fn delete(&self, key: ObjPath) -> Result<()> {
        let client = self.client.clone();
        let what = format!("delete {}/{key}", self.opts.bucket);
        self.run(async move {
            match client.delete(&key).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| map_err(&what, e))
    }

    /// Every object under `rel/` (recursive): relative key → (modified, size).
    fn list(&self, rel: &str) -> Result<Vec<(String, SystemTime, u64)>> {
        let client = self.client.clone();
        let prefix = self.key(rel);
        let strip = format!("{prefix}/");
        let what = format!("list {}/{prefix}", self.opts.bucket);
        self.run(async move {
            let metas: Vec<_> = client.list(Some(&prefix)).try_collect().await?;
            Ok(metas
                .into_iter()
                .filter_map(|m| {
                    let loc = m.location.to_string();
                    let rel = loc.strip_prefix(&strip)?.to_string();
                    Some((rel, SystemTime::from(m.last_modified), m.size))
                })
                .collect())
        })
        .map_err(|e| map_err(&what, e))
    }

    /// Whether nothing at all is stored under the prefix.
    pub fn is_empty(&self) -> Result<bool> {
        let client = self.client.clone();
        let prefix = self.key("");
        let what = format!("list {}", self.opts.url());
        self.run(async move {
            let r = client.list_with_delimiter(Some(&prefix)).await?;
            Ok(r.objects.is_empty() && r.common_prefixes.is_empty())
        })
        .map_err(|e| map_err(&what, e))
    }

    /// Images under `images/`: id → (has manifest, newest object, names).
    fn image_objects(&self) -> Result<BTreeMap<ImageId, ImageObjects>> {
        let mut out: BTreeMap<ImageId, ImageObjects> = BTreeMap::new();
        for (rel, modified, _) in self.list("images")? {
            let Some((id, name)) = rel.split_once('/') else {
                continue;
            };
            let Ok(id) = id.parse::<ImageId>() else {
                continue;
            };
            let e = out
                .entry(id)
                .or_insert((false, SystemTime::UNIX_EPOCH, Vec::new()));
            e.0 |= name == MANIFEST_FILE;
            e.1 = e.1.max(modified);
            e.2.push(name.to_string());
        }
        Ok(out)
    }
}

/// What is stored of one image: manifest present, newest object, names.
type ImageObjects = (bool, SystemTime, Vec<String>);

impl ChunkStore for S3Store {
    fn insert_chunk(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<Inserted> {
        if self.touch_chunk(digest)? {
            return Ok(Inserted::Existed);
        }
        let written = self
            .put(self.chunk_key(digest), Bytes::copy_from_slice(blob), true)
            .map_err(|e| e.context(format!("store chunk {digest}")))?;
        if written {
            Ok(Inserted::New)
        } else {
            // Someone else stored it between our touch and our PUT.
            self.touch_chunk(digest)?;
            Ok(Inserted::Existed)
        }
    }

    fn touch_chunk(&self, digest: &ChunkDigest) -> Result<bool> {
        // Marker first, then the check: see the module docs for why this
        // order makes GC's re-check see every touch that reported "present".
        self.put(self.marker_key(digest), Bytes::new(), false)?;
        Ok(self.head(self.chunk_key(digest))?.is_some())
    }

    fn read_chunk(&self, digest: &ChunkDigest, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        match self.get(self.chunk_key(digest))? {
            Some(b) => {
                buf.extend_from_slice(&b);
                Ok(())
            }
            None => Err(Error::not_found(format!(
                "chunk {digest} is missing ({}/{})",
                self.opts.url(),
                self.chunk_key(digest)
            ))),
        }
    }

    fn list_chunks(&self, f: &mut dyn FnMut(ChunkInfo) -> Result<()>) -> Result<()> {
        let mut touched: HashMap<ChunkDigest, SystemTime> = HashMap::new();
        for (rel, modified, _) in self.list("touch")? {
            if let Some(d) = rel.rsplit('/').next().and_then(|n| n.parse().ok()) {
                touched.insert(d, modified);
            }
        }
        for (rel, modified, size) in self.list("chunks")? {
            let Some(digest) = rel
                .rsplit('/')
                .next()
                .and_then(|n| n.parse::<ChunkDigest>().ok())
            else {
                continue;
            };
            let modified = touched
                .get(&digest)
                .map_or(modified, |t| (*t).max(modified));
            f(ChunkInfo {
                digest,
                size_bytes: size,
                modified,
            })?;
        }
        Ok(())
    }

    fn remove_chunk_if_older(
        &self,
        digest: &ChunkDigest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>> {
        let age = |s: &Self| -> Result<Option<SystemTime>> {
            let chunk = s.head(s.chunk_key(digest))?;
            let Some((c, _)) = chunk else { return Ok(None) };
            let m = s.head(s.marker_key(digest))?.map(|(t, _)| t);
            Ok(Some(m.map_or(c, |m| m.max(c))))
        };
        match age(self)? {
            Some(t) if t < cutoff => {}
            _ => return Ok(None),
        }
        let Some((_, size)) = self.head(self.chunk_key(digest))? else {
            return Ok(None);
        };
        // Move aside (a server-side copy, durable even if this process
        // dies), delete, then look for a touch that landed meanwhile and
        // put the chunk back if there was one. An aside left behind by a
        // crash is settled by remove_stray_files.
        let aside = self.key(&format!(
            "aside/{}-{}",
            digest.to_hex(),
            uuid::Uuid::new_v4().simple()
        ));
        match self.server_copy(self.chunk_key(digest), aside.clone()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        self.delete(self.chunk_key(digest))?;
        let marker = self.head(self.marker_key(digest))?.map(|(t, _)| t);
        if marker.is_some_and(|m| m >= cutoff) {
            self.server_copy(aside.clone(), self.chunk_key(digest))
                .map_err(|e| e.context(format!("put back chunk {digest}")))?;
            self.delete(aside)?;
            return Ok(None);
        }
        self.delete(aside)?;
        self.delete(self.marker_key(digest))?;
        Ok(Some(size))
    }

    fn io_depth(&self) -> usize {
        // A GET or PUT is mostly round trip: keep several per core going.
        8
    }

    fn remove_stray_files(&self, cutoff: SystemTime, dry_run: bool) -> Result<u64> {
        // Markers of chunks that are gone, and asides of GC runs that died
        // mid-removal. Interrupted multipart uploads are the bucket's
        // lifecycle rule's job (AbortIncompleteMultipartUpload).
        let mut chunks = std::collections::HashSet::new();
        for (rel, _, _) in self.list("chunks")? {
            chunks.insert(rel);
        }
        let mut freed = 0;
        for (rel, modified, size) in self.list("aside")? {
            if modified >= cutoff {
                continue;
            }
            let Some(digest) = rel
                .split('-')
                .next()
                .and_then(|h| h.parse::<ChunkDigest>().ok())
            else {
                continue;
            };
            let hex = digest.to_hex();
            let chunk_rel = format!("{}/{hex}", &hex[..4]);
            // Touched after the GC run moved it aside: a capture relies on
            // it, so it goes back.
            let touched = self
                .head(self.marker_key(&digest))?
                .is_some_and(|(t, _)| t >= modified);
            if dry_run {
                if !touched || chunks.contains(&chunk_rel) {
                    freed += size;
                }
                continue;
            }
            if touched && !chunks.contains(&chunk_rel) {
                self.server_copy(self.key(&format!("aside/{rel}")), self.chunk_key(&digest))?;
            } else {
                freed += size;
            }
            self.delete(self.key(&format!("aside/{rel}")))?;
        }
        for (rel, modified, size) in self.list("touch")? {
            if modified >= cutoff || chunks.contains(&rel) {
                continue;
            }
            freed += size;
            if !dry_run {
                self.delete(self.key(&format!("touch/{rel}")))?;
            }
        }
        Ok(freed)
    }
}

impl ImageStore for S3Store {
    fn read_config(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.get(self.key(STORE_CONFIG_FILE))?.map(|b| b.to_vec()))
    }

    fn create_config(&self, bytes: &[u8]) -> Result<()> {
        let conflict = || {
            Error::new(
                ErrorKind::Conflict,
                format!("{} already holds an imprint store", self.opts.url()),
            )
        };
        // Check first: put-if-absent alone is not honoured by every server.
        if self.head(self.key(STORE_CONFIG_FILE))?.is_some() {
            return Err(conflict());
        }
        if !self.put(
            self.key(STORE_CONFIG_FILE),
            Bytes::copy_from_slice(bytes),
            true,
        )? {
            return Err(conflict());
        }
        Ok(())
    }

    fn write_image_file(&self, image: &ImageId, name: &str, bytes: &[u8]) -> Result<()> {
        self.put(
            self.image_key(image, name),
            Bytes::copy_from_slice(bytes),
            false,
        )
        .map(|_| ())
    }

    fn read_image_file(&self, image: &ImageId, name: &str) -> Result<Vec<u8>> {
        match self.get(self.image_key(image, name))? {
            Some(b) => Ok(b.to_vec()),
            None => Err(Error::not_found(format!(
                "image {image} file {name} is missing"
            ))),
        }
    }

    fn commit_manifest(&self, image: &ImageId, bytes: &[u8]) -> Result<()> {
        self.put(
            self.image_key(image, MANIFEST_FILE),
            Bytes::copy_from_slice(bytes),
            false,
        )
        .map(|_| ())
    }

    fn read_manifest(&self, image: &ImageId) -> Result<Vec<u8>> {
        match self.get(self.image_key(image, MANIFEST_FILE))? {
            Some(b) => Ok(b.to_vec()),
            None => Err(Error::not_found(format!("image {image} does not exist"))),
        }
    }

    fn list_images(&self) -> Result<Vec<ImageId>> {
        Ok(self
            .image_objects()?
            .into_iter()
            .filter(|(_, (committed, _, _))| *committed)
            .map(|(id, _)| id)
            .collect())
    }

    fn list_incomplete(&self) -> Result<Vec<(ImageId, SystemTime)>> {
        Ok(self
            .image_objects()?
            .into_iter()
            .filter(|(_, (committed, _, _))| !*committed)
            .map(|(id, (_, t, _))| (id, t))
            .collect())
    }

    fn delete_image(&self, image: &ImageId) -> Result<()> {
        let objects = self.image_objects()?;
        let Some((_, _, names)) = objects.get(image) else {
            return Err(Error::not_found(format!("image {image} does not exist")));
        };
        // Manifest first: from then on the image is gone for every reader.
        self.delete(self.image_key(image, MANIFEST_FILE))?;
        for name in names.iter().filter(|n| *n != MANIFEST_FILE) {
            self.delete(self.image_key(image, name))?;
        }
        Ok(())
    }

    fn register_writer(&self, info: &WriterInfo) -> Result<()> {
        let key = self.writer_key(&info.writer_id)?;
        let bytes = serde_json::to_vec(info).map_err(|e| Error::invalid(e.to_string()))?;
        self.put(key, Bytes::from(bytes), false).map(|_| ())
    }

    fn heartbeat_writer(&self, writer_id: &str) -> Result<()> {
        // Rewriting the registration renews its Last-Modified.
        let key = self.writer_key(writer_id)?;
        let Some(bytes) = self.get(key.clone())? else {
            return Err(Error::not_found(format!(
                "writer {writer_id} is not registered"
            )));
        };
        self.put(key, bytes, false).map(|_| ())
    }

    fn unregister_writer(&self, writer_id: &str) -> Result<()> {
        let key = self.writer_key(writer_id)?;
        self.delete(key)
    }

    fn list_writers(&self) -> Result<Vec<WriterRecord>> {
        let mut out = Vec::new();
        for (rel, modified, _) in self.list("writers")? {
            if !rel.ends_with(".json") {
                continue;
            }
            let Some(bytes) = self.get(self.key(&format!("writers/{rel}")))? else {
                continue;
            };
            let info: WriterInfo = serde_json::from_slice(&bytes).map_err(|e| {
                Error::corrupt(format!("writer registration {rel} does not parse: {e}"))
            })?;
            out.push(WriterRecord {
                info,
                heartbeat: modified,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let o = S3Options::from_url_and_env("s3://bucket/some/prefix/").expect("parse");
        assert_eq!(o.bucket, "bucket");
        assert_eq!(o.prefix, "some/prefix");
        assert_eq!(o.url(), "s3://bucket/some/prefix");
        let o = S3Options::from_url_and_env("s3://b").expect("parse");
        assert_eq!((o.bucket.as_str(), o.prefix.as_str()), ("b", ""));
        let o = S3Options::from_url_and_env("s3://b/p?endpoint=http://dc2:9000&region=eu-1")
            .expect("with endpoint");
        assert_eq!(o.endpoint.as_deref(), Some("http://dc2:9000"));
        assert_eq!((o.region.as_str(), o.prefix.as_str()), ("eu-1", "p"));
        for bad in [
            "s3://",
            "s3:///x",
            "/srv/store",
            "http://b/x",
            "s3://b/p?key=x",
        ] {
            let e = S3Options::from_url_and_env(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut o = S3Options::new("b", "p");
        o.secret_access_key = Some("hunter2".into());
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}

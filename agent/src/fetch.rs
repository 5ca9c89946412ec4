//! Imports from object URLs: `s3://bucket/key` (endpoint and keys from the
//! agent's `AWS_*` environment, as for an S3 store) or `http(s)://...`.
//! The object is downloaded into the agent's transfer directory under a
//! hidden temporary name, imported like a local file (with every check of
//! a local file), and removed again whatever happens.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig, http::HttpBuilder,
    path::Path as ObjPath,
};

use crate::{
    error::{AgentError, Kind, Result},
    work::Report,
};

/// Whether `path` of an import request is an object URL.
pub fn is_url(path: &str) -> bool {
    path.starts_with("s3://") || path.starts_with("http://") || path.starts_with("https://")
}

/// Whether `url` is below one of the operator's `prefixes`. Downloads
/// run with the agent's network position and S3 keys (the store's), so
/// without this any user could read the store's objects or internal
/// services through an import.
///
/// Both are parsed as URLs (`url::Url`) and compared by parts: scheme,
/// host (case-insensitive), port (the scheme's default counts), and path
/// segments: the prefix names a directory, and the URL must be a file
/// below it (`s3://imports/public/` admits `s3://imports/public/a.qcow2`,
/// not `s3://imports/publicity/a` nor `s3://imports/public`). Dot segments
/// are refused before any of this.
pub fn allowed(url: &str, prefixes: &[String]) -> Result<()> {
    let parsed = url::Url::parse(url).map_err(|e| invalid(format!("{url:?}: {e}")))?;
    if url
        .split(['/', '?', '#'])
        .any(|seg| seg == ".." || seg == ".")
    {
        return Err(invalid(format!("{url:?}: dot segments are not allowed")));
    }
    if prefixes.iter().any(|p| below(&parsed, p)) {
        return Ok(());
    }
    Err(AgentError::new(
        Kind::PermissionDenied,
        if prefixes.is_empty() {
            "this agent allows no URL imports (set import_url_prefixes)".to_string()
        } else {
            format!(
                "{url} is not below any URL prefix this agent imports from ({})",
                prefixes.join(", ")
            )
        },
    ))
}

/// Whether `url` names a file below the directory `prefix` (see
/// [`allowed`]); a prefix that is not a URL admits nothing.
fn below(url: &url::Url, prefix: &str) -> bool {
    let Ok(p) = url::Url::parse(prefix) else {
        return false;
    };
    let segments = |u: &url::Url| -> Vec<String> {
        u.path_segments()
            .map(|s| s.map(str::to_string).collect())
            .unwrap_or_default()
    };
    let mut dir = segments(&p);
    if dir.last().is_some_and(String::is_empty) {
        dir.pop();
    }
    let file = segments(url);
    url.scheme() == p.scheme()
        && url.host_str().map(str::to_ascii_lowercase) == p.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == p.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none()
        && file.len() > dir.len()
        && file.starts_with(&dir)
        && file.last().is_some_and(|f| !f.is_empty())
}

/// A parsed object URL: the store serving it and the key in it.
pub struct Object {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    url: String,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn invalid(m: String) -> AgentError {
    AgentError::new(Kind::InvalidArgument, m)
}

/// One download may take this long.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Parse `url` into the store that serves it and the object's key.
pub fn parse(url: &str) -> Result<Object> {
    let (store, key): (Arc<dyn ObjectStore>, String) = if let Some(rest) = url.strip_prefix("s3://")
    {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| invalid(format!("{url:?} is not s3://bucket/key")))?;
        // The same settings (AWS_* environment) as an S3 store, with a
        // longer timeout: one request reads a whole disk image.
        let mut o = imprint_store::s3::S3Options::from_url_and_env(&format!("s3://{bucket}"))?;
        o.request_timeout = DOWNLOAD_TIMEOUT;
        (Arc::new(o.client()?), key.to_string())
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let slash = url[scheme_end..]
            .find('/')
            .map(|i| i + scheme_end)
            .filter(|&i| i + 1 < url.len())
            .ok_or_else(|| invalid(format!("{url:?} names no file")))?;
        let s = HttpBuilder::new()
            .with_url(&url[..slash])
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(DOWNLOAD_TIMEOUT),
            )
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
                ..Default::default()
            })
            .build()
            .map_err(|e| invalid(format!("{url}: {e}")))?;
        (Arc::new(s), url[slash + 1..].to_string())
    } else {
        return Err(invalid(format!(
            "{url:?} is not an object URL (s3://bucket/key, http(s)://host/path)"
        )));
    };
    let key = ObjPath::parse(&key).map_err(|e| invalid(format!("{url}: {e}")))?;
    Ok(Object {
        store,
        key,
        url: url.to_string(),
    })
}

fn object_error(url: &str, e: object_store::Error) -> AgentError {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => Kind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Kind::FailedPrecondition,
        _ => Kind::Unavailable,
    };
    AgentError::new(kind, format!("{url}: {e}"))
}

impl Object {
    /// The object's size; a missing object or refused credentials are
    /// errors here, before any operation starts.
    pub async fn size(&self) -> Result<u64> {
        self.store
            .head(&self.key)
            .await
            .map(|m| m.size)
            .map_err(|e| object_error(&self.url, e))
    }

    /// Download into a new hidden file in `dir`; the file is removed when
    /// the returned guard drops.
    pub async fn download(
        &self,
        dir: &Path,
        cancel: &AtomicBool,
        report: Report<'_>,
    ) -> Result<TempFile> {
        let tmp = TempFile(dir.join(format!(
            ".imprint-download-{}",
            uuid::Uuid::new_v4().simple()
        )));
        let mut file = std::fs::File::create(&tmp.0).map_err(|e| {
            AgentError::new(Kind::Internal, format!("create {}: {e}", tmp.0.display()))
        })?;
        let got = self
            .store
            .get(&self.key)
            .await
            .map_err(|e| object_error(&self.url, e))?;
        let total = got.meta.size;
        let mut stream = got.into_stream();
        let mut done = 0u64;
        while let Some(part) = stream.next().await {
            if cancel.load(Ordering::Relaxed) {
                return Err(AgentError::new(Kind::Cancelled, "import cancelled"));
            }
            let part = part.map_err(|e| object_error(&self.url, e))?;
            file.write_all(&part).map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::StorageFull {
                    Kind::ResourceExhausted
                } else {
                    Kind::Internal
                };
                AgentError::new(kind, format!("write {}: {e}", tmp.0.display()))
            })?;
            done += part.len() as u64;
            report("downloading", done, total);
        }
        file.sync_all().map_err(|e| {
            AgentError::new(Kind::Internal, format!("sync {}: {e}", tmp.0.display()))
        })?;
        Ok(tmp)
    }
}

/// A downloaded file, removed on drop.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_prefixes_are_fetched() {
        let p = vec![
            "s3://imports/public/".to_string(),
            "https://img.example/".to_string(),
        ];
        assert!(allowed("s3://imports/public/web.qcow2", &p).is_ok());
        assert!(allowed("https://img.example/a.raw", &p).is_ok());
        // Compared as URLs: case of the host, the default port.
        assert!(allowed("https://IMG.example:443/a.raw", &p).is_ok());
        assert!(allowed("s3://imports/public/sub/dir/web.qcow2", &p).is_ok());
        for bad in [
            "s3://store/images/x/disk0.fidx",
            "s3://imports/publicity/x",
            "s3://imports/public",
            "s3://imports/public/",
            "http://169.254.169.254/latest/meta-data/",
            "https://img.example.evil/a.raw",
            "https://img.example@evil.example/a.raw",
            "https://user:pw@img.example/a.raw",
            "https://img.example:8443/a.raw",
            "http://img.example/a.raw",
            "s3://imports/public/../private/x",
            "s3://imports/public/./x",
            "not a url",
        ] {
            assert!(allowed(bad, &p).is_err(), "{bad}");
        }
        assert_eq!(
            allowed("s3://imports/public/../x", &p)
                .expect_err("dots")
                .kind,
            Kind::InvalidArgument
        );
        assert_eq!(
            allowed("s3://imports/public/x", &[])
                .expect_err("none")
                .kind,
            Kind::PermissionDenied
        );
    }

    #[test]
    fn urls_parse_or_say_why_not() {
        assert!(is_url("s3://b/k.qcow2") && is_url("https://h/x") && !is_url("/srv/x"));
        assert!(parse("s3://bucket/dir/disk.qcow2").is_ok());
        assert!(parse("http://127.0.0.1:8000/disk.raw").is_ok());
        for bad in [
            "s3://bucket",
            "s3:///key",
            "http://host",
            "http://host/",
            "ftp://h/x",
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.kind, Kind::InvalidArgument, "{bad}: {e}");
        }
    }
}

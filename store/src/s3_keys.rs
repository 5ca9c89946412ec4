//! Per-bucket S3 keys, for sites on S3 servers that need different keys.
//!
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` give one set of keys per
//! process. A host that reaches several sites' stores on different S3
//! servers names a keys file in `IMPRINT_S3_CREDENTIALS` (the units read it
//! from their environment file):
//!
//! ```toml
//! [[bucket]]
//! bucket = "imprint-dc2"
//! endpoint = "https://s3.dc2.example.net"   # optional: any endpoint
//! access_key_id = "…"
//! secret_access_key = "…"
//! ```
//!
//! A store location whose bucket (and endpoint, when the entry names one)
//! matches an entry uses its keys instead of the environment's. The file
//! must not be readable by others (mode `…0`, e.g. 0600 or 0640): keys
//! stay with the service user, never in the catalog.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::OnceLock};

use serde::Deserialize;

use crate::{Error, ErrorKind, Result, s3::S3Options};

/// One bucket's keys.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BucketKeys {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL; `None` matches any.
    pub endpoint: Option<String>,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for BucketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("BucketKeys")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    bucket: Vec<BucketKeys>,
}

/// The environment variable naming the keys file.
pub const ENV: &str = "IMPRINT_S3_CREDENTIALS";

/// Read a keys file; refused when others may read it.
pub fn load(path: &Path) -> Result<Vec<BucketKeys>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("S3 keys file {}", path.display()), e))?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "S3 keys file {} is readable by others (mode {:o}); chmod 0600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("S3 keys file {}", path.display()), e))?;
    let f: KeysFile = toml::from_str(&text)
        .map_err(|e| Error::invalid(format!("S3 keys file {}: {e}", path.display())))?;
    Ok(f.bucket)
}

/// The keys of `IMPRINT_S3_CREDENTIALS`, read once per process.
fn configured() -> Result<&'static [BucketKeys]> {
    static KEYS: OnceLock<std::result::Result<Vec<BucketKeys>, (ErrorKind, String)>> =
        OnceLock::new();
    let r = KEYS.get_or_init(|| match std::env::var_os(ENV) {
        Some(p) if !p.is_empty() => load(Path::new(&p)).map_err(|e| (e.kind(), e.to_string())),
        _ => Ok(Vec::new()),
    });
    match r {
        Ok(v) => Ok(v),
        Err((kind, msg)) => Err(Error::new(*kind, msg.clone())),
    }
}

/// Put the keys of the first matching entry into `o`.
pub fn apply(entries: &[BucketKeys], o: &mut S3Options) {
    if let Some(k) = entries
        .iter()
        .find(|k| k.bucket == o.bucket && (k.endpoint.is_none() || k.endpoint == o.endpoint))
    {
        o.access_key_id = Some(k.access_key_id.clone());
        o.secret_access_key = Some(k.secret_access_key.clone());
    }
}

/// [`apply`] with the process's configured keys.
pub fn apply_configured(o: &mut S3Options) -> Result<()> {
    apply(configured()?, o);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_bucket_and_endpoint_from_a_private_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("keys.toml");
        std::fs::write(
            &path,
            r#"
[[bucket]]
bucket = "dc2"
endpoint = "http://dc2:9000"
access_key_id = "k2"
secret_access_key = "s2"

[[bucket]]
bucket = "any"
access_key_id = "ka"
secret_access_key = "sa"
"#,
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load(&path).expect_err("world-readable");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let keys = load(&path).expect("load");
        assert!(
            !format!("{keys:?}").contains("s2"),
            "secrets are not printed"
        );

        let mut o = S3Options::new("dc2", "p");
        o.endpoint = Some("http://dc2:9000".into());
        apply(&keys, &mut o);
        assert_eq!(o.access_key_id.as_deref(), Some("k2"));
        let mut other_server = S3Options::new("dc2", "p");
        other_server.endpoint = Some("http://elsewhere:9000".into());
        other_server.access_key_id = Some("env".into());
        apply(&keys, &mut other_server);
        assert_eq!(
            other_server.access_key_id.as_deref(),
            Some("env"),
            "endpoint differs"
        );
        let mut any = S3Options::new("any", "");
        apply(&keys, &mut any);
        assert_eq!(any.secret_access_key.as_deref(), Some("sa"));
        std::fs::write(&path, "[[bucket]]\nbucket = 1\n").expect("write");
        assert_eq!(
            load(&path).expect_err("bad").kind(),
            ErrorKind::InvalidArgument
        );
    }
}

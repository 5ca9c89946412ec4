//! Where the agent serves its API, and who may reach it.
//!
//! The agent acts on guests and images as root, so nothing reaches its API
//! without a credential:
//! - plaintext only on a UNIX socket, mode 0660, owned by root and the
//!   service group (`--socket-group`, the group the daemon runs as): the
//!   file mode is the credential, and no other local user can connect;
//! - TCP only with mutual TLS (a client certificate of the CA).
//!
//! There is no plaintext TCP listener at all, loopback included: loopback
//! does not say which local user connects.

use std::{
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context, Result, bail};

/// The default socket of a plaintext agent.
pub const DEFAULT_SOCKET: &str = "/run/imprint-agent/agent.sock";

/// One listen address: `unix:PATH` (or an absolute path) or `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A UNIX socket at this path.
    Unix(PathBuf),
    /// A TCP address (TLS only).
    Tcp(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            return unix_path(p);
        }
        if s.starts_with('/') {
            return unix_path(s);
        }
        s.parse().map(Listen::Tcp).map_err(|_| {
            format!("listen address {s:?}: write unix:/PATH for a socket or HOST:PORT for TLS")
        })
    }
}

fn unix_path(p: &str) -> Result<Listen, String> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(format!("socket path {p:?} must be absolute"));
    }
    // sun_path holds 108 bytes with the terminating NUL.
    if p.len() > 107 {
        return Err(format!("socket path {p:?} is longer than 107 bytes"));
    }
    Ok(Listen::Unix(path))
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl Listen {
    /// The default: the socket without TLS, `127.0.0.1:7341` with it.
    pub fn default_for(tls: bool) -> Self {
        if tls {
            Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 7341)))
        } else {
            Listen::Unix(PathBuf::from(DEFAULT_SOCKET))
        }
    }

    /// Refuse what would serve the API without a credential.
    pub fn check(&self, tls: bool) -> Result<()> {
        if let Listen::Tcp(a) = self
            && !tls
        {
            bail!(
                "refusing to serve on {a}: without TLS (--tls-cert, --tls-key, --tls-ca) the agent serves only on a UNIX socket (--listen unix:{DEFAULT_SOCKET})"
            );
        }
        Ok(())
    }
}

/// Bind a UNIX socket at `path`, mode 0660, group `gid` when given.
///
/// A stale socket of an earlier run is replaced; any other file at the
/// path is refused. The socket is made in a private (0700) directory next
/// to it, restricted, then renamed into place, so it is never reachable
/// with the process umask's mode. (Not by narrowing the umask: that is the
/// whole process's, and a file another thread made meanwhile, such as a
/// directory, would get the narrow mode.)
pub fn bind_unix(path: &Path, gid: Option<u32>) -> Result<tokio::net::UnixListener> {
    let parent = path
        .parent()
        .with_context(|| format!("socket path {} has no directory", path.display()))?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("create socket directory {}", parent.display()))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?,
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspect {}", path.display())),
    }
    let file_name = path
        .file_name()
        .with_context(|| format!("socket path {} names no file", path.display()))?;
    // A fresh 0700 directory of its own (mkdtemp): never one left by a
    // crashed run or made by another agent sharing the folder.
    let private =
        nix::unistd::mkdtemp(&parent.join(format!(".{}.XXXXXX", file_name.to_string_lossy())))
            .with_context(|| format!("create a private directory in {}", parent.display()))?;
    let tmp = private.join("s");
    let set_up = || -> Result<tokio::net::UnixListener> {
        let listener = tokio::net::UnixListener::bind(&tmp)
            .with_context(|| format!("listen on {}", tmp.display()))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .with_context(|| format!("set the group of {}", path.display()))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("set the mode of {}", path.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("set up socket {}", path.display()))?;
        Ok(listener)
    };
    let listener = set_up();
    let _ = std::fs::remove_dir_all(&private);
    listener
}

/// The id of group `name`.
pub fn group_id(name: &str) -> Result<u32> {
    Ok(nix::unistd::Group::from_name(name)
        .with_context(|| format!("look up group {name:?}"))?
        .with_context(|| format!("there is no group {name:?}"))?
        .gid
        .as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            "unix:/run/a.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            "unix:///run/a.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            "/run/a.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:7341".parse::<Listen>(),
            Ok(Listen::Tcp("127.0.0.1:7341".parse().expect("addr")))
        );
        for bad in [
            "unix:rel.sock",
            "localhost",
            "",
            &format!("unix:/{}", "a".repeat(120)),
        ] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plaintext_tcp_is_refused_even_on_loopback() {
        let lo = Listen::Tcp("127.0.0.1:0".parse().expect("addr"));
        assert!(lo.check(false).is_err());
        assert!(lo.check(true).is_ok());
        assert!(Listen::default_for(false).check(false).is_ok());
    }

    #[tokio::test]
    async fn socket_is_0660_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.sock");
        let l = bind_unix(&path, None).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        // The private directory it was made in is gone.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["a.sock"]);
        drop(l);
        // The file stays after the listener is gone: a restart replaces it.
        bind_unix(&path, None).expect("rebind");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(bind_unix(&file, None).is_err());
    }
}

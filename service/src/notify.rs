//! The systemd notification protocol (`sd_notify(3)`), without libsystemd:
//! one datagram of `KEY=VALUE` lines to the socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Outside
//! systemd there is no socket and every call is a no-op.

use std::{future::Future, io, os::unix::net::UnixDatagram, path::Path, time::Duration};

/// Send `state` to the socket at `path` (`@name`: abstract namespace).
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(path))?;
    }
    Ok(())
}

/// Send `state` to systemd if it is listening; `Ok(false)` when not run by
/// systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(p) if !p.is_empty() => notify_to(&p, state).map(|()| true),
        _ => Ok(false),
    }
}

fn log_failure(r: io::Result<bool>, what: &str) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot notify systemd ({what})");
    }
}

/// Serving for real now.
pub fn ready(status: &str) {
    log_failure(notify(&format!("READY=1\nSTATUS={status}")), "ready");
}

/// What the service is doing (shown by `systemctl status`).
pub fn status(status: &str) {
    log_failure(notify(&format!("STATUS={status}")), "status");
}

/// Shutting down.
pub fn stopping(status: &str) {
    log_failure(notify(&format!("STOPPING=1\nSTATUS={status}")), "stopping");
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), if any and if
/// meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pet the watchdog at half its interval while `healthy()` says so; a
/// service that stops being healthy stops petting and systemd restarts it.
pub fn spawn_watchdog<F, Fut>(healthy: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let Some(every) = watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            if healthy().await {
                log_failure(notify("WATCHDOG=1"), "watchdog");
            } else {
                tracing::warn!("health check failed; not petting the watchdog");
            }
            tokio::time::sleep(every / 2).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.to_str().expect("utf8"), "READY=1\nSTATUS=serving").expect("send");
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("imprint-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let server = UnixDatagram::bind_addr(&addr).expect("bind");
        notify_to(&format!("@{name}"), "WATCHDOG=1").expect("send");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}

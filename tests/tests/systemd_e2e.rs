//! `imprintd` and `imprint-agent` as systemd `Type=notify` services: they
//! send READY=1 once serving, pet the watchdog, report STATUS=, serve
//! /metrics, and stop cleanly (STOPPING=1, exit 0) on SIGTERM. The notify
//! socket is the test's own, as systemd would pass it.

use std::{
    ffi::OsStr,
    io::{Read, Write},
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use imprint_tests::*;

/// Datagrams until one contains `want` (or the timeout); all of them.
fn until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want:?} within {timeout:?}; got {seen:?}");
}

fn metrics(port: u16) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut s = String::new();
    c.read_to_string(&mut s).expect("read");
    s
}

fn stops_cleanly_on_sigterm(p: &mut ServerProcess, sock: &UnixDatagram) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    until(sock, "STOPPING=1", Duration::from_secs(10));
    let start = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_and_agent_speak_sd_notify_and_stop_cleanly() {
    let wd = Workdir::new("imprint-systemd-");
    let sock_path = wd.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let env: [(&str, &OsStr); 2] = [
        ("NOTIFY_SOCKET", sock_path.as_os_str()),
        ("WATCHDOG_USEC", OsStr::new("400000")),
    ];
    let port = free_tcp_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let state = wd.path().join("imprintd");
    let store = wd.path().join("store");
    let mut daemon = ServerProcess::start_env(
        "imprintd",
        &[
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
            "--metrics-listen".as_ref(),
            metrics_addr.as_ref(),
        ],
        &env,
    );
    let seen = until(&sock, "READY=1", Duration::from_secs(10));
    assert!(
        seen.iter().any(|m| m.contains("STATUS=serving on")),
        "{seen:?}"
    );
    until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    let m = metrics(port);
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(m.contains("# TYPE imprint_operations_running gauge"), "{m}");
    assert!(m.contains("imprint_hosts 0"), "{m}");

    // The agent registers: the daemon counts its heartbeats.
    let agent_metrics = free_tcp_port();
    let agent_metrics_addr = format!("127.0.0.1:{agent_metrics}");
    let token = run(
        binary("imprintd").to_str().expect("utf8"),
        &[
            "--state-dir",
            state.to_str().expect("utf8"),
            "host",
            "add",
            "kvm-sd",
        ],
    );
    let token_file = wd.path().join("host.token");
    std::fs::write(&token_file, token.trim()).expect("token");
    let socket = format!("unix:{}", wd.path().join("agent.sock").display());
    let mut agent = ServerProcess::start_env(
        "imprint-agent",
        &[
            "--listen".as_ref(),
            socket.as_ref(),
            "--host-token-file".as_ref(),
            token_file.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
            "--journal-dir".as_ref(),
            wd.path().join("journal").as_os_str(),
            "--daemon".as_ref(),
            daemon.endpoint.as_ref(),
            "--host-name".as_ref(),
            "kvm-sd".as_ref(),
            "--metrics-listen".as_ref(),
            agent_metrics_addr.as_ref(),
        ],
        &env,
    );
    until(&sock, "READY=1", Duration::from_secs(10));
    let start = Instant::now();
    while !metrics(port).contains("imprint_agent_heartbeats_total{host=\"kvm-sd\"}") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no heartbeat counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metrics(agent_metrics).starts_with("HTTP/1.1 200 OK"));
    stops_cleanly_on_sigterm(&mut agent, &sock);
    stops_cleanly_on_sigterm(&mut daemon, &sock);
}

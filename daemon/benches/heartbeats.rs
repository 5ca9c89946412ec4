//! One `imprintd` (the real binary, SQLite catalog) with 1,000 simulated
//! agents, each on its own connection, registering and then heartbeating
//! every 10 s as real agents do. Reports the daemon's CPU time and peak
//! memory (from /proc), heartbeat errors and latency, and whether every
//! host is alive at the end.
//!
//! ```text
//! cargo bench -p imprint-daemon --bench heartbeats -- [--agents 1000] [--seconds 60]
//! ```

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use imprint_proto::v1::{self as pb, host_service_client::HostServiceClient};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// (utime + stime in seconds, VmHWM in KiB) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let hz = CLK_TCK;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / hz, hwm)
}

/// sysconf(_SC_CLK_TCK): 100 on Linux on every architecture we run.
const CLK_TCK: f64 = 100.0;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agents = arg(&args, "--agents", 1000);
    let seconds = arg(&args, "--seconds", 60);
    let interval = Duration::from_secs(u64::from(
        imprint_daemon::dispatch::HEARTBEAT_INTERVAL_SECONDS,
    ));
    let bin = env!("CARGO_BIN_EXE_imprintd");
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let out = Command::new(bin)
        .arg("--state-dir")
        .arg(&state)
        .args(["account", "create", "ops", "--admin"])
        .stderr(Stdio::null())
        .output()
        .expect("imprintd account create");
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    // Every simulated host has its token, as `imprintd host add` makes.
    let host_tokens: Vec<String> = {
        let catalog = imprint_daemon::catalog::Catalog::open(&format!(
            "sqlite://{}?mode=rwc",
            state.join("catalog.db").display()
        ))
        .await
        .expect("catalog");
        let mut v = Vec::new();
        for i in 0..agents {
            v.push(
                catalog
                    .add_host_token(&format!("sim-{i:04}"))
                    .await
                    .expect("host token"),
            );
        }
        v
    };
    let mut daemon = Command::new(bin)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start imprintd");
    let pid = daemon.id();
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let endpoint = format!(
        "http://{}",
        line.trim()
            .strip_prefix("listening on ")
            .expect("listening line")
    );

    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat_us = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (cpu0, _) = usage(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..agents {
        let host_token = host_tokens[i as usize].clone();
        let (endpoint, sent, errors, lat_us) = (
            endpoint.clone(),
            sent.clone(),
            errors.clone(),
            lat_us.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Spread the agents over one interval, as hosts booted at
            // different times would be.
            tokio::time::sleep(interval.mul_f64(i as f64 / agents as f64)).await;
            let ch = tonic::transport::Endpoint::from_shared(endpoint)
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            let mut c = HostServiceClient::new(ch);
            let name = format!("sim-{i:04}");
            let mut register = tonic::Request::new(pb::RegisterHostRequest {
                name: name.clone(),
                agent_endpoint: format!("unix:///run/sim-{i:04}.sock"),
                libvirt_uri: "qemu:///system".into(),
                version: "sim".into(),
                cpus: 64,
                memory_bytes: 512 << 30,
                site: String::new(),
            });
            register.metadata_mut().insert(
                "authorization",
                format!("Bearer {host_token}").parse().expect("ascii"),
            );
            if c.register_host(register).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = c.heartbeat(authed_beat(&host_token, &name)).await;
                sent.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(_) => lat_us
                        .lock()
                        .expect("lock")
                        .push(t.elapsed().as_micros() as u64),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(interval).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("agent task");
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, hwm) = usage(pid);
    let mut hosts = HostServiceClient::connect(endpoint).await.expect("connect");
    let mut req = tonic::Request::new(pb::ListHostsRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let list = hosts
        .list_hosts(req)
        .await
        .expect("list")
        .into_inner()
        .hosts;
    let alive = list.iter().filter(|h| h.alive).count();
    let _ = daemon.kill();
    let _ = daemon.wait();

    let mut lat = lat_us.lock().expect("lock").clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    println!(
        "| agents | seconds | heartbeats | errors | hb p50 ms | hb p99 ms | daemon CPU s | CPU % of a core | daemon peak RSS MiB | alive at end |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {agents} | {wall:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {alive} / {} |",
        sent.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        cpu1 - cpu0,
        (cpu1 - cpu0) / wall * 100.0,
        hwm as f64 / 1024.0,
        list.len()
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no heartbeat may fail");
    assert_eq!(
        alive as u64, agents,
        "every simulated host alive at the end"
    );
}

/// A heartbeat of host `name` with its token.
fn authed_beat(token: &str, name: &str) -> tonic::Request<pb::HeartbeatRequest> {
    let mut r = tonic::Request::new(pb::HeartbeatRequest {
        name: name.into(),
        running_operation_ids: vec![],
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

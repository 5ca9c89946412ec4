//! Process metrics for Prometheus, served on `GET /metrics`.
//!
//! The metrics are typed families, all declared here: [`Daemon`] for
//! `imprintd`, [`Agent`] for `imprint-agent`. Each process has one
//! registry (like every Prometheus client library), and a set of families
//! joins it the first time [`daemon`] or [`agent`] is called, so a process
//! exposes only its own metrics. `prometheus-client` does the registry and
//! the Prometheus text format (0.0.4); axum, which tonic already brings,
//! does the HTTP.
//!
//! A counter is registered without its `_total` suffix: the encoder adds
//! it (and panics in debug builds when the name already has it).

use std::{
    future::Future,
    sync::{Mutex, MutexGuard, OnceLock},
};

use axum::{
    Router,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

/// Labels of a finished operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// capture, deploy, import, export, copy, delete.
    pub kind: &'static str,
    /// succeeded, failed, cancelled.
    pub result: &'static str,
}

/// An operation kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Which bytes of a capture.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureBytesLabels {
    /// read, stored, deduplicated, zero.
    pub what: &'static str,
}

/// A host, by its registered name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

/// The daemon's metrics (`docs/operator.md#metrics` lists them).
#[derive(Debug)]
pub struct Daemon {
    /// `imprint_operations_total`
    pub operations: Family<OperationLabels, Counter>,
    /// `imprint_operation_seconds_total`
    pub operation_seconds: Family<KindLabels, Counter>,
    /// `imprint_capture_bytes_total`
    pub capture_bytes: Family<CaptureBytesLabels, Counter>,
    /// `imprint_deploy_bytes_total`
    pub deploy_bytes: Counter,
    /// `imprint_agent_heartbeats_total`
    pub agent_heartbeats: Family<HostLabels, Counter>,
    /// `imprint_operations_running`
    pub operations_running: Gauge,
    /// `imprint_hosts_alive`
    pub hosts_alive: Gauge,
    /// `imprint_hosts`
    pub hosts: Gauge,
    /// `imprint_store_unknown_images`
    pub store_unknown_images: Gauge,
}

impl Daemon {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            operations: Family::default(),
            operation_seconds: Family::default(),
            capture_bytes: Family::default(),
            deploy_bytes: Counter::default(),
            agent_heartbeats: Family::default(),
            operations_running: Gauge::default(),
            hosts_alive: Gauge::default(),
            hosts: Gauge::default(),
            store_unknown_images: Gauge::default(),
        };
        // Help texts without the final full stop: the encoder adds it.
        r.register(
            "imprint_operations",
            "Operations finished, by kind and result",
            m.operations.clone(),
        );
        r.register(
            "imprint_operation_seconds",
            "Wall-clock seconds of finished operations, by kind (divide by imprint_operations_total)",
            m.operation_seconds.clone(),
        );
        r.register(
            "imprint_capture_bytes",
            "Bytes of successful captures: read from guests, newly stored (compressed), deduplicated, zero",
            m.capture_bytes.clone(),
        );
        r.register(
            "imprint_deploy_bytes",
            "Guest-visible bytes written by successful deploys",
            m.deploy_bytes.clone(),
        );
        r.register(
            "imprint_agent_heartbeats",
            "Heartbeats received from agents, by host",
            m.agent_heartbeats.clone(),
        );
        r.register(
            "imprint_operations_running",
            "Operations running now",
            m.operations_running.clone(),
        );
        r.register(
            "imprint_hosts_alive",
            "Hosts whose agent sent a heartbeat in the last 30 s",
            m.hosts_alive.clone(),
        );
        r.register("imprint_hosts", "Registered hosts", m.hosts.clone());
        r.register(
            "imprint_store_unknown_images",
            "Manifests in the stores that no catalog row knows (never deleted by the daemon)",
            m.store_unknown_images.clone(),
        );
        m
    }
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Agent {
    /// `imprint_agent_operations_total`
    pub operations: Family<OperationLabels, Counter>,
}

impl Agent {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            operations: Family::default(),
        };
        r.register(
            "imprint_agent_operations",
            "Operations this agent finished, by kind and result",
            m.operations.clone(),
        );
        m
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The daemon's metrics in this process's registry.
pub fn daemon() -> &'static Daemon {
    static M: OnceLock<Daemon> = OnceLock::new();
    M.get_or_init(|| Daemon::register(&mut registry()))
}

/// The agent's metrics in this process's registry.
pub fn agent() -> &'static Agent {
    static M: OnceLock<Agent> = OnceLock::new();
    M.get_or_init(|| Agent::register(&mut registry()))
}

/// This process's metrics in the Prometheus text format.
pub fn render() -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry())?;
    Ok(out)
}

async fn scrape() -> Response {
    match render() {
        Ok(body) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Answer `GET /metrics` on `listener` (any other path: 404) until
/// `shutdown` resolves, then finish the scrapes under way and return.
/// Pass `token.cancelled_owned()` to stop with a `CancellationToken`.
///
/// Every response closes its connection (one scrape per connection):
/// Prometheus reconnects at each scrape interval anyway, and a client
/// that reads to the end of the stream gets an end.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only GET /metrics here\n") })
        .layer(axum::middleware::map_response(|mut r: Response| async {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn encode(r: &Registry) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, r).expect("encode");
        out
    }

    /// The exposition keeps the names, help texts, types and label
    /// escaping that dashboards and the end-to-end tests rely on.
    #[test]
    fn exposition_format() {
        let mut r = Registry::default();
        let d = Daemon::register(&mut r);
        let labels = OperationLabels {
            kind: "capture",
            result: "succeeded",
        };
        d.operations.get_or_create(&labels).inc();
        d.operations.get_or_create(&labels).inc_by(2);
        d.hosts.set(1);
        d.operation_seconds
            .get_or_create(&KindLabels { kind: "capture" })
            .inc_by(5);
        d.agent_heartbeats
            .get_or_create(&HostLabels {
                host: "a\"b\\c\nd".into(),
            })
            .inc();
        let text = encode(&r);
        for want in [
            "# HELP imprint_operations_total Operations finished, by kind and result.\n\
             # TYPE imprint_operations_total counter\n\
             imprint_operations_total{kind=\"capture\",result=\"succeeded\"} 3\n",
            "# HELP imprint_hosts Registered hosts.\n# TYPE imprint_hosts gauge\nimprint_hosts 1\n",
            "# TYPE imprint_operations_running gauge\nimprint_operations_running 0\n",
            "imprint_agent_heartbeats_total{host=\"a\\\"b\\\\c\\nd\"} 1\n",
            "# HELP imprint_operation_seconds_total Wall-clock seconds of finished operations, by kind (divide by imprint_operations_total).\n\
             # TYPE imprint_operation_seconds_total counter\n\
             imprint_operation_seconds_total{kind=\"capture\"} 5\n",
            "# TYPE imprint_deploy_bytes_total counter\nimprint_deploy_bytes_total 0\n",
            "# HELP imprint_store_unknown_images Manifests in the stores that no catalog row knows (never deleted by the daemon).\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        // A family without series is left out, as before any was counted.
        assert!(!text.contains("imprint_capture_bytes"), "{text}");
        assert!(!text.contains("imprint_agent_operations"), "{text}");
    }

    #[test]
    fn agent_metrics() {
        let mut r = Registry::default();
        let a = Agent::register(&mut r);
        a.operations
            .get_or_create(&OperationLabels {
                kind: "deploy",
                result: "failed",
            })
            .inc();
        assert_eq!(
            encode(&r),
            "# HELP imprint_agent_operations_total Operations this agent finished, by kind and result.\n\
             # TYPE imprint_agent_operations_total counter\n\
             imprint_agent_operations_total{kind=\"deploy\",result=\"failed\"} 1\n"
        );
    }

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(request.as_bytes()).await.expect("write");
        let mut s = String::new();
        // Reading to the end proves the server closes the connection.
        tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_string(&mut s))
            .await
            .expect("the server closes the connection")
            .expect("read");
        s
    }

    #[tokio::test]
    async fn http_endpoint() {
        daemon().hosts.set(0);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, async {
            let _ = stopped.await;
        }));

        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(ok.contains("\r\n\r\n# HELP "), "{ok}");
        assert!(ok.contains("\nimprint_hosts 0\n"), "{ok}");
        let q = get(addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n"), "{q}");
        let nf = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nf}");
        assert!(nf.ends_with("only GET /metrics here\n"), "{nf}");

        stop.send(()).expect("server running");
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the server stops at shutdown")
            .expect("join")
            .expect("serve");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

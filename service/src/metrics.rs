//! Process metrics in the Prometheus text format (version 0.0.4), served
//! on a small HTTP endpoint (`GET /metrics`). One registry per process,
//! like Prometheus client libraries keep: [`global`].

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: &'static str,
    series: BTreeMap<String, f64>,
}

/// A registry of counters and gauges with labels.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl Metrics {
    fn with(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        f: impl FnOnce(&mut BTreeMap<String, f64>),
    ) {
        let mut fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let fam = fams.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        f(&mut fam.series);
    }

    /// Add `by` to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], by: f64) {
        self.with(name, help, "counter", |s| {
            *s.entry(labels(l)).or_default() += by
        });
    }

    /// Set a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
        self.with(name, help, "gauge", |s| {
            s.insert(labels(l), v);
        });
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, fam) in fams.iter() {
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind);
            for (l, v) in &fam.series {
                let _ = writeln!(out, "{name}{l} {v}");
            }
        }
        out
    }
}

/// The process's registry.
pub fn global() -> &'static Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(Arc::default)
}

/// Answer `GET /metrics` on `listener` with `m` (anything else: 404).
/// HTTP/1.1, one request per connection: what Prometheus scrapes need.
pub async fn serve(listener: TcpListener, m: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (ignore any body).
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => {
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    m.render(),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    "only GET /metrics here\n".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.inc(
            "imprint_ops_total",
            "Operations.",
            &[("kind", "capture"), ("result", "succeeded")],
            1.0,
        );
        m.inc(
            "imprint_ops_total",
            "Operations.",
            &[("kind", "capture"), ("result", "succeeded")],
            2.0,
        );
        m.set("imprint_up", "Up.", &[], 1.0);
        m.inc("imprint_odd", "Odd labels.", &[("host", "a\"b\\c\nd")], 1.0);
        assert_eq!(
            m.render(),
            "# HELP imprint_odd Odd labels.\n# TYPE imprint_odd counter\nimprint_odd{host=\"a\\\"b\\\\c\\nd\"} 1\n\
             # HELP imprint_ops_total Operations.\n# TYPE imprint_ops_total counter\nimprint_ops_total{kind=\"capture\",result=\"succeeded\"} 3\n\
             # HELP imprint_up Up.\n# TYPE imprint_up gauge\nimprint_up 1\n"
        );
    }

    #[tokio::test]
    async fn http_endpoint() {
        let m = Arc::new(Metrics::default());
        m.set("imprint_up", "Up.", &[], 1.0);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(serve(l, m));
        let get = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut s = String::new();
            c.read_to_string(&mut s).await.expect("read");
            s
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("imprint_up 1\n"), "{ok}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
    }
}

//! Printing results: tables for people, one JSON object for scripts.

use std::io::Write;

use serde::Serialize;

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// One JSON object on stdout; field names are stable.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// What every command needs to print.
#[derive(Debug)]
pub struct Ctx {
    pub format: Format,
    pub quiet: bool,
}

impl Ctx {
    /// Print `value` as JSON, or `table` as text.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let text = match self.format {
            Format::Json => serde_json::to_string_pretty(value)? + "\n",
            Format::Yaml => yaml(&serde_json::to_value(value)?),
            Format::Table => table(),
        };
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            // The reader stopped reading (`imprint … | head`): nothing
            // more to say, and no reason to fail.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r?),
        }
    }
}

/// A JSON value as block-style YAML (strings always quoted, so nothing is
/// read back as a number, boolean or null by mistake).
pub fn yaml(v: &serde_json::Value) -> String {
    use serde_json::Value as V;
    fn scalar(v: &V) -> String {
        match v {
            V::String(s) => serde_json::to_string(s).unwrap_or_default(),
            other => other.to_string(),
        }
    }
    fn block(v: &V, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match v {
            V::Object(m) if !m.is_empty() => {
                for (k, val) in m {
                    let key = serde_json::to_string(k).unwrap_or_default();
                    match val {
                        V::Object(o) if !o.is_empty() => {
                            out.push_str(&format!("{pad}{key}:\n"));
                            block(val, indent + 2, out);
                        }
                        V::Array(a) if !a.is_empty() => {
                            out.push_str(&format!("{pad}{key}:\n"));
                            block(val, indent, out);
                        }
                        other => out.push_str(&format!("{pad}{key}: {}\n", empty_or_scalar(other))),
                    }
                }
            }
            V::Array(a) if !a.is_empty() => {
                for item in a {
                    match item {
                        V::Object(o) if !o.is_empty() => {
                            let mut inner = String::new();
                            block(item, indent + 2, &mut inner);
                            // The first key goes on the dash line.
                            let rest = inner.trim_start_matches(' ');
                            out.push_str(&format!("{pad}- {rest}"));
                        }
                        V::Array(x) if !x.is_empty() => {
                            out.push_str(&format!("{pad}-\n"));
                            block(item, indent + 2, out);
                        }
                        other => out.push_str(&format!("{pad}- {}\n", empty_or_scalar(other))),
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", empty_or_scalar(other))),
        }
    }
    fn empty_or_scalar(v: &V) -> String {
        match v {
            V::Object(_) => "{}".into(),
            V::Array(_) => "[]".into(),
            other => scalar(other),
        }
    }
    let mut out = String::new();
    block(v, 0, &mut out);
    out
}

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Rows of cells as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `key: value` lines.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$}  {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
    }

    #[test]
    fn yaml_blocks() {
        let v = serde_json::json!({
            "images": [{"id": "a", "tags": ["x", "y"], "size": 3}, {"id": "b", "tags": []}],
            "next": "",
            "on": true,
        });
        assert_eq!(
            yaml(&v),
            "\"images\":\n- \"id\": \"a\"\n  \"size\": 3\n  \"tags\":\n  - \"x\"\n  - \"y\"\n- \"id\": \"b\"\n  \"tags\": []\n\"next\": \"\"\n\"on\": true\n"
        );
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\n");
    }
}

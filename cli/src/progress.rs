//! Progress on stderr: one rewritten line on a terminal, plain lines every
//! few seconds otherwise (logs and CI never see escape codes).

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use crate::output::bytes;

/// A rate in bytes per second as whole bytes, for display.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "float-to-int `as` saturates (NaN and negatives to 0, huge to u64::MAX) and drops the fraction, which is what a displayed rate wants"
)]
fn whole_bytes(rate: f64) -> u64 {
    rate as u64
}

/// Reports `done / total` of a phase.
#[derive(Debug)]
pub struct Progress {
    label: String,
    enabled: bool,
    tty: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    pub fn new(label: impl Into<String>, quiet: bool) -> Self {
        Self {
            label: label.into(),
            enabled: !quiet,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    /// Change what the line says it is doing.
    pub fn set_label(&mut self, label: &str) {
        if self.label != label {
            self.label = label.to_string();
            // A new phase is worth a line at once.
            self.last = None;
        }
    }

    /// Report progress with the rate and ETA the server computed.
    pub fn update_with_rate(&mut self, done: u64, total: u64, rate: f64, eta: f64) {
        let extra = if rate > 0.0 {
            format!(" at {}/s, eta {eta:.0}s", bytes(whole_bytes(rate)))
        } else {
            String::new()
        };
        self.update(done, total, &extra);
    }

    /// Report; rate-limited so it is cheap to call often.
    pub fn update(&mut self, done: u64, total: u64, extra: &str) {
        if !self.enabled {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        self.print(done, total, extra);
    }

    fn print(&self, done: u64, total: u64, extra: &str) {
        if total == 0 && done == 0 {
            // A phase without bytes (shutting down, starting): its name.
            let line = format!("{}...", self.label);
            let mut err = std::io::stderr().lock();
            if self.tty {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 && done < total {
            format!(" eta {:.0}s", (total - done) as f64 / rate)
        } else {
            String::new()
        };
        let line = format!(
            "{}: {pct:5.1}% {} / {} ({}/s){eta}{extra}",
            self.label,
            bytes(done),
            bytes(total),
            bytes(whole_bytes(rate))
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Final line.
    pub fn finish(&mut self, total: u64, extra: &str) {
        self.finish_at(total, total, extra);
    }

    /// Final line, where the work stopped.
    pub fn finish_at(&mut self, done: u64, total: u64, extra: &str) {
        if !self.enabled {
            return;
        }
        self.print(done, total, extra);
        if self.tty {
            eprintln!();
        }
    }
}

//! Logs: `tracing` to stderr. Under systemd (`$JOURNAL_STREAM` set, stderr
//! going to the journal) lines carry no timestamp and no colour, since the
//! journal records its own; `RUST_LOG` picks the level (default `info`).

/// Install the subscriber once, at start.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty && !journal);
    if journal {
        builder.without_time().with_target(false).init();
    } else {
        builder.init();
    }
}

//! Termination signals.

/// Logs the signal once per process, however many futures wait for it
/// (the gRPC server and the metrics endpoint both do).
fn received(signal: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::info!("{signal} received"));
}

/// Resolves at the first SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => received("SIGTERM"),
                _ = int.recv() => received("SIGINT"),
            }
        }
        _ => {
            // Cannot install handlers: wait for Ctrl-C the portable way.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

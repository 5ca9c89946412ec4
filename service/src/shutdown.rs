//! Termination signals.

/// Resolves at the first SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Cannot install handlers: wait for Ctrl-C the portable way.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

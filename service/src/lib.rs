//! Process plumbing shared by `imprintd` and `imprint-agent`, so both
//! behave the same under systemd:
//!
//! - [`notify`]: `sd_notify` (READY, STATUS, STOPPING, WATCHDOG) over
//!   `$NOTIFY_SOCKET`, and a watchdog that pets only while a health check
//!   passes;
//! - [`shutdown`]: SIGTERM and SIGINT as one future;
//! - [`logging`]: `tracing` to stderr, in journald's taste when run by
//!   systemd (no timestamps or colours: the journal adds its own);
//! - [`metrics`]: the typed Prometheus metrics of both, and their
//!   `GET /metrics` endpoint.

pub mod logging;
pub mod metrics;
pub mod notify;
pub mod shutdown;

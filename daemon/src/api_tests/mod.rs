//! The daemon's API end to end in one process: the real services over gRPC
//! on loopback, the real catalog (SQLite and PostgreSQL), the real store,
//! and a real agent whose hypervisor is the fake one (libvirt itself is
//! exercised by the end-to-end tests in `tests/`).
//!
//! [`world`] builds the daemon, the agent and the accounts; each other file
//! holds the scenarios of one area, each run on every catalog backend.

mod access;
mod bad_input;
mod damaged;
mod guests;
mod heartbeats;
mod lazy;
mod lint;
mod profiles;
mod progress;
mod reconcile;
mod reflection;
mod seal;
mod sites;
mod world;

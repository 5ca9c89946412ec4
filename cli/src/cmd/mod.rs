//! One module per top-level subcommand, named after it: `imprint image
//! deploy` is in `image/` (`image/deploy.rs`), `imprint store gc` in
//! `store/`, `imprint op watch` in `op.rs`.
//!
//! All but `store` call the daemon's API: each `run` takes the connected
//! clients ([`crate::client::Api`]) and returns the exit code. Every
//! command prints the server's answer as a table (people) or as one
//! JSON/YAML document (scripts; field names are the proto's). Errors print
//! the server's message; the exit code tells the class (`docs/cli.md`).

pub mod account;
pub mod guest;
pub mod host;
pub mod image;
pub mod op;
pub mod profile;
pub mod store;

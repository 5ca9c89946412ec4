//! The control daemon (`imprintd`): the gRPC API users call, the catalog of
//! images and operations, and dispatch of work to host agents.
//!
//! Data flows down: [`api`] (one gRPC service per file) → [`spec`]
//! (validation at the proto edge) → [`ops`] (the life of an image
//! operation) → [`dispatch`] (agents, following operations) → [`catalog`]
//! (the only SQL). [`error`] is the one map to gRPC codes, [`domain`] the
//! typed states and kinds. docs/daemon.md has the map and the life of a
//! request.

pub mod api;
#[cfg(test)]
mod api_tests;
pub mod auth;
pub mod background;
pub mod catalog;
pub mod credentials;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod liveness;
pub mod ops;
pub mod paging;
pub mod reconcile;
pub mod server;
pub mod spec;
#[cfg(test)]
mod testpg;

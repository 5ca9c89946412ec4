//! The control daemon (`imprintd`): the gRPC API users call, the catalog of
//! images and operations, and dispatch of work to host agents.
//!
//! - [`catalog`] and [`ops`]: the rows (SQLite or PostgreSQL through sqlx).
//! - [`auth`]: bearer tokens of accounts; [`credentials`]: of hosts (or
//!   certificates bound to host names).
//! - [`guests`]: which account owns which guest.
//! - [`images`], [`operations`], [`hosts`], [`accounts`]: the gRPC services.
//! - [`dispatch`]: sending operations to agents and following them, also
//!   across daemon restarts.

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
pub mod hosts;
pub mod liveness;
pub mod ops;
pub mod paging;
pub mod reconcile;
pub mod server;
pub mod spec;
#[cfg(test)]
mod testpg;

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

pub mod accounts;
#[cfg(test)]
mod api_tests;
pub mod auth;
pub mod background;
pub mod catalog;
pub mod credentials;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod guests;
pub mod hosts;
pub mod images;
pub mod liveness;
pub mod operations;
pub mod paging;
pub mod profiles;
pub mod reconcile;
pub mod server;
#[cfg(test)]
mod testpg;

//! The control daemon (`imprintd`): the gRPC API users call, the catalog of
//! images and operations, and dispatch of work to host agents.
//!
//! In progress (issue 4): the catalog is here; the gRPC services follow.

pub mod catalog;
pub mod ops;
#[cfg(test)]
mod testpg;

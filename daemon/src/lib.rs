//! The control daemon (`imprintd`): the gRPC API users call, the catalog of
//! images and operations, and dispatch of work to host agents.
//!
//! In progress (issue 4): the catalog and `HostService` are here; the image
//! and operation services follow.

pub mod catalog;
pub mod hosts;
pub mod ops;
#[cfg(test)]
mod testpg;

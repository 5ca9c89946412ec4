//! The control daemon (`imprintd`): the gRPC API users call, the catalog of
//! images and operations, and dispatch of work to host agents.
//!
//! Lands with issue 4; the crate exists now so the workspace layout is final.

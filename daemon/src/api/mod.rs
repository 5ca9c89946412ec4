//! The gRPC services, one file each. A handler authenticates, turns its
//! message into a spec ([`crate::spec`]), calls the catalog or
//! [`crate::ops`], and answers; errors become statuses only here, through
//! [`crate::error`].

pub mod accounts;
pub mod guests;
pub mod hosts;
pub mod images;
pub mod operations;
pub mod profiles;

//! The host agent (`imprint-agent`).
pub mod cloudinit;
pub mod domain;

//! # imprint-agent
//!
//! Runs on every hypervisor host: captures guests into the image store and
//! deploys images as new guests, through libvirt.
//!
//! - [`hypervisor`]: the seam (trait) to the hypervisor; [`libvirt`] is the
//!   only module that touches libvirt. Its calls block and run on blocking
//!   threads.
//! - [`work`]: capture and deploy, written against the trait.
//! - [`journal`]: in-flight work on local disk, finished or undone at start.
//! - [`domain`]: domain XML in and out; [`cloudinit`]: the NoCloud seed.
//! - [`service`]: the gRPC API (`proto/imprint/v1/agent.proto`); [`listen`]:
//!   where it is served (a 0660 UNIX socket, or TCP with mutual TLS only).

pub mod checkpoints;
pub mod cloudinit;
pub mod disks;
pub mod domain;
pub mod error;
pub mod fetch;
pub mod freeze;
pub mod generalize;
pub mod hypervisor;
pub mod journal;
pub mod lazy;
pub mod libvirt;
pub mod lint;
pub mod listen;
pub mod nbd;
pub mod partitions;
pub mod qcow2;
pub mod scratch;
pub mod seal;
pub mod service;
pub mod tool;
pub mod transfer;
pub mod work;

//! The host agent (`imprint-agent`): talks to libvirt through the `virt`
//! crate and streams guest disks into and out of the image store.
//!
//! Lands with issue 3; the crate exists now so the workspace layout is final.

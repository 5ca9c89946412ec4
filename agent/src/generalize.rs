//! A fresh identity for every clone: before a deployed guest first boots,
//! its new volumes are generalized with libguestfs's `virt-sysprep`
//! (Debian package `guestfs-tools`): a new machine-id (systemd-networkd's
//! DHCP DUID comes from it), SSH host keys removed (regenerated at first
//! boot), cloud-init instance data, DHCP leases, persistent net rules,
//! logs, shell histories, temporary files and the rest of its default
//! operations for Linux guests. The guest's filesystems are edited inside
//! libguestfs's appliance, never mounted on the host; the image and the
//! source guest are never touched.
//!
//! Cost: the appliance boots for each deploy (about 5 s under TCG, 10 s in
//! all with inspection and the operations; see docs/benchmarks.md).

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crate::error::{AgentError, Kind, Result};

/// The tool.
const SYSPREP: &str = "virt-sysprep";
/// virt-sysprep's default operations, except `ssh-userdir`: users'
/// `~/.ssh` (their authorized keys) is how many templates are reached,
/// and it is no part of a machine's identity.
const OPERATIONS: &str = "defaults,-ssh-userdir";
/// How often a running sysprep looks at the cancel flag.
const POLL: Duration = Duration::from_millis(100);

/// Whether this host can generalize (the tool is installed): refused
/// before anything is made otherwise.
pub fn check() -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(SYSPREP).is_file()));
    if found {
        Ok(())
    } else {
        Err(AgentError::new(
            Kind::FailedPrecondition,
            "this host cannot give a new guest a fresh identity: virt-sysprep is not installed (Debian package guestfs-tools); deploy with keep_identity (--keep-identity) to keep the image's",
        ))
    }
}

/// How a libguestfs tool (`cmd`) runs its appliance here: as a child of
/// ours (no libvirtd session), and under TCG when the host has no usable
/// hardware virtualisation (`tcg`), so it never tries KVM.
pub fn appliance(cmd: &mut Command, tcg: bool) -> &mut Command {
    cmd.env("LIBGUESTFS_BACKEND", "direct");
    if tcg {
        cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    }
    cmd
}

/// Generalize the disks of one new guest (`(path, format)`, in the order
/// the guest sees them) in place. `tcg`: the host has no usable hardware
/// virtualisation, so libguestfs's appliance must not try KVM.
pub fn generalize(disks: &[(&Path, &str)], tcg: bool, cancel: &AtomicBool) -> Result<()> {
    let mut cmd = Command::new(SYSPREP);
    for (path, format) in disks {
        cmd.arg("--format").arg(format).arg("-a").arg(path);
    }
    appliance(&mut cmd, tcg)
        .args(["--operations", OPERATIONS, "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| AgentError::new(Kind::FailedPrecondition, format!("run {SYSPREP}: {e}")))?;
    // stderr is small (errors and warnings); read it once the tool ends.
    let status = loop {
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(AgentError::new(Kind::Cancelled, "cancelled"));
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                return Err(AgentError::new(
                    Kind::Internal,
                    format!("wait for {SYSPREP}: {e}"),
                ));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut err);
    }
    Err(failure(&err))
}

/// What a failed sysprep means for the deploy.
fn failure(stderr: &str) -> AgentError {
    let said = stderr
        .lines()
        .find_map(|l| l.strip_prefix("virt-sysprep: error: "))
        .unwrap_or_else(|| stderr.lines().next().unwrap_or("no error message"))
        .trim();
    let what = if said.contains("no operating systems were found") {
        "no operating system was found on its disks (no OS, or an encrypted or unknown filesystem)"
    } else {
        "virt-sysprep failed"
    };
    AgentError::new(
        Kind::FailedPrecondition,
        format!(
            "cannot give the new guest a fresh identity: {what} ({said}); deploy with keep_identity (--keep-identity) to keep the image's"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_without_an_os_is_a_precondition_naming_the_way_out() {
        let e = failure(
            "virt-sysprep: error: no operating systems were found in the guest \nimage\n\nIf reporting bugs, run virt-sysprep with debugging enabled",
        );
        assert_eq!(e.kind, Kind::FailedPrecondition);
        let text = e.to_string();
        assert!(text.contains("no operating system was found"), "{text}");
        assert!(text.contains("--keep-identity"), "{text}");
        let other = failure("virt-sysprep: error: libguestfs error: could not create appliance\n");
        assert!(
            other.to_string().contains("could not create appliance"),
            "{other}"
        );
    }
}

//! A fresh identity for every clone: before a deployed guest first boots,
//! its new volumes are generalized with libguestfs's `virt-sysprep`
//! (Debian package `guestfs-tools`): a new machine-id (systemd-networkd's
//! DHCP DUID comes from it), SSH host keys removed (regenerated at first
//! boot), cloud-init's instance state (deleted by our own arguments:
//! virt-sysprep has no operation for it), DHCP leases, persistent net
//! rules, logs, shell histories, temporary files and the rest of its
//! default operations for Linux guests. The guest's filesystems are
//! edited inside libguestfs's appliance, never mounted on the host; the
//! image and the source guest are never touched. A capture with `seal`
//! runs the same on overlays of what it reads ([`crate::seal`]).
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
/// cloud-init's state of the instances the guest was (virt-sysprep has no
/// operation for it): part of what `cloud-init clean` removes, the seed
/// and the operator's scripts kept. Globs; what is not there is no error.
const CLOUD_INIT_STATE: [&str; 5] = [
    "/var/lib/cloud/instance",
    "/var/lib/cloud/instances",
    "/var/lib/cloud/data",
    "/var/lib/cloud/sem",
    "/var/lib/cloud/handlers",
];
/// Where Linux distributions keep the seed of their random number
/// generator across boots (the files virt-sysprep rewrites).
const RANDOM_SEEDS: [&str; 2] = [
    "/var/lib/systemd/random-seed",
    "/var/lib/urandom/random-seed",
];
/// How often a running sysprep looks at the cancel flag.
const POLL: Duration = Duration::from_millis(100);

/// What the disks are generalized for: errors name the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A new guest's volumes before it first boots.
    Deploy,
    /// A capture's view of the source's disks ([`crate::seal`]).
    Seal,
}

impl Purpose {
    fn what(self) -> &'static str {
        match self {
            Purpose::Deploy => "give the new guest a fresh identity",
            Purpose::Seal => "seal the image",
        }
    }

    /// What virt-sysprep does besides its operations (its `customize`
    /// operation runs them last, after rewriting the random seeds with
    /// new bytes and giving an empty `/etc/machine-id` a new random id):
    /// cloud-init's state deleted; for a seal, the machine-id emptied and
    /// the seeds deleted, since every clone would share them (each
    /// clone's systemd makes its own machine-id at first boot, and a seed
    /// when it shuts down).
    fn customizations(self) -> Vec<&'static str> {
        let mut args: Vec<&str> = CLOUD_INIT_STATE
            .iter()
            .flat_map(|p| ["--delete", *p])
            .collect();
        if self == Purpose::Seal {
            args.extend(["--write", "/etc/machine-id:"]);
            for seed in RANDOM_SEEDS {
                args.extend(["--delete", seed]);
            }
        }
        args
    }

    fn way_out(self) -> &'static str {
        match self {
            Purpose::Deploy => "deploy with keep_identity (--keep-identity) to keep the image's",
            Purpose::Seal => "capture without seal (deploys give each clone a fresh identity)",
        }
    }
}

/// Whether this host can generalize (the tool is installed): refused
/// before anything is made otherwise.
pub fn check(purpose: Purpose) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(SYSPREP).is_file()));
    if found {
        Ok(())
    } else {
        Err(AgentError::new(
            Kind::FailedPrecondition,
            format!(
                "this host cannot {}: virt-sysprep is not installed (Debian package guestfs-tools); {}",
                purpose.what(),
                purpose.way_out()
            ),
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

/// Generalize the disks of one guest (`(path, format)`, in the order the
/// guest sees them) in place. `tcg`: the host has no usable hardware
/// virtualisation, so libguestfs's appliance must not try KVM.
pub fn generalize(
    disks: &[(&Path, &str)],
    tcg: bool,
    cancel: &AtomicBool,
    purpose: Purpose,
) -> Result<()> {
    // A SIGKILLed agent's recovery removes what it edits (overlays, new
    // volumes): the tool goes with the agent.
    let mut cmd = crate::tool::dying_with_agent(SYSPREP);
    for (path, format) in disks {
        cmd.arg("--format").arg(format).arg("-a").arg(path);
    }
    appliance(&mut cmd, tcg)
        .args(["--operations", OPERATIONS, "--quiet"])
        .args(purpose.customizations())
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
    Err(failure(&err, purpose))
}

/// What a failed sysprep means for the deploy or capture.
fn failure(stderr: &str, purpose: Purpose) -> AgentError {
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
            "cannot {}: {what} ({said}); {}",
            purpose.what(),
            purpose.way_out()
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
            Purpose::Deploy,
        );
        assert_eq!(e.kind, Kind::FailedPrecondition);
        let text = e.to_string();
        assert!(text.contains("no operating system was found"), "{text}");
        assert!(text.contains("--keep-identity"), "{text}");
        let other = failure(
            "virt-sysprep: error: libguestfs error: could not create appliance\n",
            Purpose::Seal,
        );
        let text = other.to_string();
        assert!(text.contains("could not create appliance"), "{text}");
        assert!(text.contains("cannot seal the image"), "{text}");
        assert!(text.contains("capture without seal"), "{text}");
    }

    #[test]
    fn cloud_init_state_goes_and_a_seal_empties_the_machine_id_and_seeds() {
        let deploy = Purpose::Deploy.customizations();
        assert!(
            deploy
                .windows(2)
                .any(|w| w == ["--delete", "/var/lib/cloud/instances"])
        );
        assert!(!deploy.contains(&"/etc/machine-id:"));
        let seal = Purpose::Seal.customizations();
        assert_eq!(seal[..deploy.len()], deploy[..]);
        assert!(!deploy.contains(&"/var/lib/systemd/random-seed"));
        assert_eq!(
            seal[deploy.len()..deploy.len() + 2],
            ["--write", "/etc/machine-id:"]
        );
        assert!(
            seal.windows(2)
                .any(|w| w == ["--delete", "/var/lib/systemd/random-seed"])
        );
    }
}

//! A fresh identity on every root layout the issue names: ext4 and XFS, a
//! whole-disk filesystem, MBR and GPT partitions, LVM. libguestfs itself
//! makes the disks (guestfish: no loop devices, no root on the host), each
//! a skeleton Debian root with an identity (machine-id, an SSH host key,
//! cloud-init instance state, a random seed); `generalize` runs virt-sysprep on each as a
//! deploy (or, on one, a seal) does, and a second appliance reads what is
//! left. Real libguestfs under TCG; nothing boots.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::AtomicBool,
};

use imprint_agent::generalize::{Purpose, appliance, generalize};
use sha2::Digest;

/// The source's machine-id.
const SOURCE_ID: &str = "0123456789abcdef0123456789abcdef";
/// The source's random seed.
const SOURCE_SEED: &str = "the source's seed";

/// Run a guestfish script over `disks` (raw); its output.
fn fish(disks: &[PathBuf], read_only: bool, script: &str) -> String {
    let mut cmd = Command::new("guestfish");
    if read_only {
        cmd.arg("--ro");
    }
    for d in disks {
        cmd.args(["--format=raw", "-a"]).arg(d);
    }
    let mut child = appliance(&mut cmd, true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guestfish (libguestfs-tools) is installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    let out = child.wait_with_output().expect("guestfish");
    assert!(
        out.status.success(),
        "guestfish failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// A layout: how its disk is partitioned and where its root is.
struct Layout {
    name: &'static str,
    /// guestfish commands making the root filesystem on `/dev/sdX`.
    make: &'static str,
    /// The root's device in the appliance (`X` for the disk's letter).
    root: &'static str,
    /// Its type.
    fs: &'static str,
    /// What the guest's fstab names it (the guest sees one virtio disk).
    fstab: &'static str,
}

const LAYOUTS: [Layout; 4] = [
    Layout {
        name: "whole-disk ext4",
        make: "mkfs ext4 /dev/sdX",
        root: "/dev/sdX",
        fs: "ext4",
        fstab: "/dev/vda",
    },
    Layout {
        name: "MBR, XFS",
        make: "part-disk /dev/sdX mbr\nmkfs xfs /dev/sdX1",
        root: "/dev/sdX1",
        fs: "xfs",
        fstab: "/dev/vda1",
    },
    Layout {
        name: "GPT, ext4",
        make: "part-disk /dev/sdX gpt\nmkfs ext4 /dev/sdX1",
        root: "/dev/sdX1",
        fs: "ext4",
        fstab: "/dev/vda1",
    },
    Layout {
        name: "LVM on MBR, XFS",
        make: "part-disk /dev/sdX mbr\npvcreate /dev/sdX1\nvgcreate imprinttest /dev/sdX1\nlvcreate-free root imprinttest 100\nmkfs xfs /dev/imprinttest/root",
        root: "/dev/imprinttest/root",
        fs: "xfs",
        fstab: "/dev/imprinttest/root",
    },
];

fn letter(i: usize) -> char {
    char::from(b'a' + u8::try_from(i).expect("few disks"))
}

/// Make every layout's disk in `dir` (one appliance), each root holding a
/// skeleton Debian with the source's identity.
fn make_disks(dir: &Path) -> Vec<PathBuf> {
    let disks: Vec<PathBuf> = (0..LAYOUTS.len())
        .map(|i| dir.join(format!("disk{i}.raw")))
        .collect();
    for d in &disks {
        // XFS needs 300 MiB at least; sparse.
        std::fs::File::create(d)
            .and_then(|f| f.set_len(512 << 20))
            .expect("disk");
    }
    let mut script = String::from("run\n");
    for (i, l) in LAYOUTS.iter().enumerate() {
        let x = letter(i).to_string();
        let root = l.root.replace('X', &x);
        script += &l.make.replace('X', &x);
        script += &format!(
            "
mount {root} /
mkdir-p /etc/ssh
mkdir-p /bin
mkdir-p /usr/bin
mkdir-p /var/lib/dpkg
mkdir-p /var/lib/cloud/instances/i-source
ln-s /var/lib/cloud/instances/i-source /var/lib/cloud/instance
mkdir-p /var/lib/cloud/data
mkdir-p /var/lib/cloud/sem
mkdir-p /var/lib/cloud/scripts/per-boot
mkdir-p /var/lib/cloud/seed/nocloud
mkdir-p /var/lib/systemd
write /var/lib/systemd/random-seed \"{SOURCE_SEED}\"
write /etc/os-release \"NAME=Debian\\nVERSION_ID=12\\nID=debian\\n\"
write /etc/debian_version \"12.5\\n\"
write /etc/fstab \"{fstab} / {fs} defaults 0 1\\n\"
write /etc/machine-id \"{SOURCE_ID}\\n\"
write /etc/ssh/ssh_host_ed25519_key \"not a key\\n\"
write /var/lib/dpkg/status \"\"
write /var/lib/cloud/instances/i-source/obj.pkl \"state\"
write /var/lib/cloud/seed/nocloud/meta-data \"instance-id: i-seed\\n\"
umount /
",
            fs = l.fs,
            fstab = l.fstab,
        );
    }
    fish(&disks, false, &script);
    disks
}

#[test]
fn every_root_layout_gets_a_fresh_identity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let disks = make_disks(tmp.path());
    let never = AtomicBool::new(false);
    // The last layout is sealed (an image's identity emptied), the others
    // generalized as a deploy's new volumes are.
    let purposes = [
        Purpose::Deploy,
        Purpose::Deploy,
        Purpose::Deploy,
        Purpose::Seal,
    ];
    for (d, purpose) in disks.iter().zip(purposes) {
        generalize(&[(d.as_path(), "raw")], true, &never, purpose)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    let mut script = String::from("run\n");
    for (i, l) in LAYOUTS.iter().enumerate() {
        let root = l.root.replace('X', &letter(i).to_string());
        // A deploy's seed is rewritten, a seal's deleted.
        let seed = match purposes[i] {
            Purpose::Deploy => "checksum sha256 /var/lib/systemd/random-seed",
            Purpose::Seal => "exists /var/lib/systemd/random-seed",
        };
        script += &format!(
            "echo =={i}\nmount-ro {root} /\ncat /etc/machine-id\necho --keys\nglob-expand /etc/ssh/ssh_host_*\necho --cloud\nls /var/lib/cloud\necho --seed\n{seed}\numount /\n"
        );
    }
    let out = fish(&disks, true, &script);
    for (i, l) in LAYOUTS.iter().enumerate() {
        let section = out
            .split(&format!("=={i}\n"))
            .nth(1)
            .and_then(|s| s.split("\n==").next())
            .unwrap_or_else(|| panic!("{}: no output\n{out}", l.name));
        let (id, rest) = section.split_once("--keys\n").expect("keys marker");
        let (keys, rest) = rest.split_once("--cloud\n").expect("cloud marker");
        let (cloud, seed) = rest.split_once("--seed\n").expect("seed marker");
        let (id, seed) = (id.trim(), seed.trim());
        match purposes[i] {
            Purpose::Deploy => {
                assert_eq!(id.len(), 32, "{}: a new machine-id: {id:?}", l.name);
                assert_ne!(id, SOURCE_ID, "{}: the machine-id is new", l.name);
                assert_eq!(seed.len(), 64, "{}: a seed's SHA-256: {seed:?}", l.name);
                assert_ne!(
                    seed,
                    hex::encode(sha2::Sha256::digest(SOURCE_SEED)),
                    "{}: the random seed is new",
                    l.name
                );
            }
            Purpose::Seal => {
                assert_eq!(id, "", "{}: a sealed machine-id is empty", l.name);
                assert_eq!(seed, "false", "{}: a sealed image has no seed", l.name);
            }
        }
        assert_eq!(keys.trim(), "", "{}: SSH host keys removed", l.name);
        let cloud: Vec<&str> = cloud.lines().map(str::trim).collect();
        assert_eq!(
            cloud,
            ["scripts", "seed"],
            "{}: cloud-init's instance state removed, its seed and scripts kept",
            l.name
        );
    }
}

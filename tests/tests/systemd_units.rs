//! The unit files in `systemd/` pass `systemd-analyze verify` (pointed at
//! the binaries just built) and keep their hardening: the exposure score
//! of `systemd-analyze security --offline=true` stays at or under 2.5 for
//! the agent (root, some capabilities) and 1.5 for the daemon and the GC
//! and verify jobs.

use std::process::Command;

use imprint_tests::*;

#[test]
fn units_verify_and_stay_hardened() {
    let wd = Workdir::new("imprint-units-");
    let src = workspace().join("systemd");
    let units = [
        "imprintd.service",
        "imprint-agent.service",
        "imprint.target",
        "imprint-gc.service",
        "imprint-gc.timer",
        "imprint-verify.service",
        "imprint-verify.timer",
    ];
    for unit in units {
        let text = std::fs::read_to_string(src.join(unit)).expect("unit");
        let text = text
            .replace(
                "/usr/bin/imprintd",
                binary("imprintd").to_str().expect("utf8"),
            )
            .replace(
                "/usr/bin/imprint-agent",
                binary("imprint-agent").to_str().expect("utf8"),
            )
            .replace(
                "/usr/bin/imprint ",
                &format!("{} ", binary("imprint").to_str().expect("utf8")),
            );
        std::fs::write(wd.path().join(unit), text).expect("write");
    }
    let out = Command::new("systemd-analyze")
        .current_dir(wd.path())
        .args(["verify", "--man=no"])
        .args(units)
        .output()
        .expect("systemd-analyze (package systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (unit, threshold) in [
        ("imprintd.service", "15"),
        ("imprint-agent.service", "25"),
        ("imprint-gc.service", "15"),
        ("imprint-verify.service", "15"),
    ] {
        let out = Command::new("systemd-analyze")
            .current_dir(wd.path())
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--threshold={threshold}"))
            .arg(unit)
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stdout);
        let score = text.lines().last().unwrap_or_default().to_string();
        eprintln!("{score}");
        assert!(
            out.status.success(),
            "{unit} above {threshold}/10 exposure: {score}\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

//! An image as the commands print it: a JSON document (field names are
//! the proto's), a table row, `key: value` lines.

use anyhow::Result;
use imprint_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{
    cmd::profile::{profile_json, profile_summary},
    enum_names::{image_state_name, location_state_name, visibility_name},
    output::{self, Ctx},
};

/// Print one image.
pub fn show(ctx: &Ctx, i: pb::Image) -> Result<u8> {
    ctx.emit(&image_json(&i), || image_fields(&i))?;
    Ok(0)
}

pub fn image_json(i: &pb::Image) -> Value {
    json!({
        "id": i.id, "name": i.name, "notes": i.notes, "tags": i.tags, "owner": i.owner,
        "state": image_state_name(i.state), "visibility": visibility_name(i.visibility),
        "protected": i.protected, "sealed": i.sealed, "failure_reason": i.failure_reason,
        "source_host": i.source_host, "source_guest": i.source_guest,
        "disks": i.disks.iter().map(|d| json!({"name": d.name, "size_bytes": d.size_bytes, "sha256": d.sha256})).collect::<Vec<_>>(),
        "size_bytes": i.size_bytes, "exclusive_bytes": i.exclusive_bytes,
        "config": serde_json::from_str::<Value>(&i.config_json).unwrap_or(Value::Null),
        "members": i.members.iter().map(|m| json!({"account": m.account, "status": m.status})).collect::<Vec<_>>(),
        "created_unix": i.created_unix, "updated_unix": i.updated_unix,
        "locations": i.locations.iter().map(|l| json!({"site": l.site, "state": location_state_name(l.state)})).collect::<Vec<_>>(),
        "damage": i.damage,
        "recommended_profiles": i.recommended_profiles,
        "min_vcpus": i.min_vcpus, "min_memory_mib": i.min_memory_mib, "min_disk_bytes": i.min_disk_bytes,
        "hardware": i.hardware.as_ref().map(profile_json),
        "lint": i.lint.as_ref().map(lint_json), "linted_unix": i.linted_unix,
    })
}

/// A lint report as JSON (severity names, not numbers).
pub fn lint_json(r: &pb::LintReport) -> Value {
    json!({
        "os": r.os.as_ref().map(|o| json!({"kind": o.kind, "distro": o.distro, "product": o.product})),
        "findings": r.findings.iter().map(|f| json!({
            "severity": severity_name(f.severity), "code": f.code, "message": f.message, "fix": f.fix,
        })).collect::<Vec<_>>(),
    })
}

fn severity_name(s: i32) -> &'static str {
    match pb::LintSeverity::try_from(s) {
        Ok(pb::LintSeverity::Error) => "error",
        Ok(pb::LintSeverity::Warning) => "warning",
        Ok(pb::LintSeverity::Info) => "info",
        _ => "unspecified",
    }
}

/// A lint report as lines: the OS, then one finding per line with its fix.
pub fn lint_lines(r: &pb::LintReport) -> Vec<String> {
    let mut out = vec![match &r.os {
        Some(o) => format!("{} {} ({})", o.distro, o.product, o.kind),
        None => "operating system unknown".into(),
    }];
    for f in &r.findings {
        out.push(format!(
            "{}: {} [{}] fix: {}",
            severity_name(f.severity),
            f.message,
            f.code,
            f.fix
        ));
    }
    out
}

pub fn image_row(i: &pb::Image) -> Vec<String> {
    vec![
        i.id.clone(),
        i.name.clone(),
        i.owner.clone(),
        image_state_name(i.state),
        visibility_name(i.visibility),
        output::bytes(i.size_bytes),
        i.tags.join(","),
    ]
}

pub const IMAGE_HEADER: [&str; 7] = ["ID", "NAME", "OWNER", "STATE", "VISIBILITY", "SIZE", "TAGS"];

fn image_fields(i: &pb::Image) -> String {
    let mut f = vec![
        ("id", i.id.clone()),
        ("name", i.name.clone()),
        ("owner", i.owner.clone()),
        ("state", image_state_name(i.state)),
        ("visibility", visibility_name(i.visibility)),
        ("protected", i.protected.to_string()),
        ("sealed", i.sealed.to_string()),
        ("size", output::bytes(i.size_bytes)),
        ("freed if deleted", output::bytes(i.exclusive_bytes)),
        ("source", format!("{} / {}", i.source_host, i.source_guest)),
        ("tags", i.tags.join(", ")),
        ("notes", i.notes.clone()),
    ];
    if !i.damage.is_empty() {
        f.push(("DAMAGED", i.damage.clone()));
    }
    if !i.recommended_profiles.is_empty() {
        f.push(("recommended profiles", i.recommended_profiles.join(", ")));
    }
    if i.min_vcpus > 0 || i.min_memory_mib > 0 || i.min_disk_bytes > 0 {
        f.push((
            "requires",
            format!(
                "{} vCPU, {} MiB, first disk {} bytes",
                i.min_vcpus, i.min_memory_mib, i.min_disk_bytes
            ),
        ));
    }
    if let Some(h) = &i.hardware {
        f.push(("hardware", profile_summary(h)));
    }
    if let Some(r) = &i.lint {
        for l in lint_lines(r) {
            f.push(("lint", l));
        }
    }
    if let Ok(c) = serde_json::from_str::<Value>(&i.config_json)
        && c.is_object()
    {
        f.push((
            "configuration",
            format!(
                "{} vCPU, {} MiB, {} firmware{}",
                c["vcpus"],
                c["memory_kib"].as_u64().unwrap_or(0) / 1024,
                c["firmware"]["kind"].as_str().unwrap_or("?"),
                match c["machine"].as_str() {
                    Some(m) if !m.is_empty() => format!(", machine {m}"),
                    _ => String::new(),
                }
            ),
        ));
    }
    for (n, d) in i.disks.iter().enumerate() {
        f.push((
            "disk",
            format!(
                "{n}: {} {} sha256 {}",
                d.name,
                output::bytes(d.size_bytes),
                d.sha256
            ),
        ));
    }
    for m in &i.members {
        f.push(("shared with", format!("{} ({})", m.account, m.status)));
    }
    for l in &i.locations {
        f.push((
            "stored at",
            format!("{} ({})", l.site, location_state_name(l.state)),
        ));
    }
    if !i.failure_reason.is_empty() {
        f.push(("failure", i.failure_reason.clone()));
    }
    output::fields(&f)
}

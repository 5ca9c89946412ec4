//! The CLI's words for proto enum values (`IMAGE_STATE_ACTIVE` is
//! `active`), both ways, from prost's `as_str_name`/`from_str_name`.

use anyhow::{Result, bail};
use imprint_proto::v1 as pb;

use crate::exit::usage;

/// The CLI's name of a proto enum value: its proto name without the
/// enum's prefix, lower-case (`IMAGE_STATE_ACTIVE` → `active`); "unknown"
/// for numbers this CLI does not know.
fn enum_name(proto_name: Option<&str>, prefix: &str) -> String {
    proto_name
        .and_then(|n| n.strip_prefix(prefix))
        .filter(|n| *n != "UNSPECIFIED")
        .map_or_else(|| "unknown".to_string(), str::to_ascii_lowercase)
}

/// [`enum_name`] of the number `v` of the enum `E`.
fn name_of<E: TryFrom<i32>>(v: i32, as_str_name: fn(&E) -> &'static str, prefix: &str) -> String {
    enum_name(E::try_from(v).ok().as_ref().map(as_str_name), prefix)
}

/// The proto enum value the CLI name `name` stands for (see [`enum_name`]);
/// a usage error listing the `allowed` names otherwise.
fn enum_value<E: Into<i32>>(
    name: &str,
    prefix: &str,
    from_str_name: fn(&str) -> Option<E>,
    allowed: &[&str],
) -> Result<i32> {
    match from_str_name(&format!("{prefix}{}", name.to_ascii_uppercase())) {
        Some(v) if allowed.contains(&name) => Ok(v.into()),
        _ => bail!(usage(format!(
            "unknown value {name:?} ({})",
            allowed.join(", ")
        ))),
    }
}

pub fn image_state_name(v: i32) -> String {
    name_of(v, pb::ImageState::as_str_name, "IMAGE_STATE_")
}

pub fn visibility_name(v: i32) -> String {
    name_of(v, pb::Visibility::as_str_name, "VISIBILITY_")
}

pub fn op_state_name(v: i32) -> String {
    name_of(v, pb::OperationState::as_str_name, "OPERATION_STATE_")
}

pub fn location_state_name(v: i32) -> String {
    name_of(v, pb::LocationState::as_str_name, "LOCATION_STATE_")
}

/// `--state` of `image list`.
pub fn image_state(name: &str) -> Result<i32> {
    let allowed = ["creating", "active", "failed", "deprecated", "deleting"];
    enum_value(
        name,
        "IMAGE_STATE_",
        pb::ImageState::from_str_name,
        &allowed,
    )
}

/// `--visibility` of `image list`.
pub fn visibility(name: &str) -> Result<i32> {
    let allowed = ["private", "shared", "public"];
    enum_value(name, "VISIBILITY_", pb::Visibility::from_str_name, &allowed)
}

/// A capture mode as the CLI prints it (unspecified is offline).
pub fn capture_mode_name(mode: i32) -> String {
    match pb::CaptureMode::try_from(mode) {
        Ok(pb::CaptureMode::Unspecified) => "offline".into(),
        m => enum_name(m.ok().map(|m| m.as_str_name()), "CAPTURE_MODE_"),
    }
}

/// `--disk-format`: raw or qcow2.
pub fn disk_format(s: &str) -> Result<i32> {
    Ok(match s {
        "raw" => pb::DiskFormat::Raw,
        "qcow2" => pb::DiskFormat::Qcow2,
        o => bail!(usage(format!("unknown disk format {o:?} (raw, qcow2)"))),
    } as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_ways() {
        let active = pb::ImageState::Active as i32;
        assert_eq!(image_state_name(active), "active");
        assert_eq!(image_state("active").ok(), Some(active));
        assert!(image_state("Active").is_err());
        assert!(image_state("unspecified").is_err());
        assert_eq!(image_state_name(0), "unknown");
        assert_eq!(image_state_name(999), "unknown");
        assert_eq!(capture_mode_name(0), "offline");
        assert_eq!(
            capture_mode_name(pb::CaptureMode::CrashConsistent as i32),
            "crash_consistent"
        );
    }
}

//! Running the host tools the agent drives (qemu-img, guestfish...) to
//! their end.

use std::process::{Command, Stdio};

use crate::error::{AgentError, Kind, Result};

/// Run `cmd` (stdin empty) to its end; its standard output. A tool
/// missing from the host (or not executable) is `FailedPrecondition`,
/// any other failure `Internal`; each with `what` it was doing, and for a
/// tool that failed what it said.
pub fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Kind::FailedPrecondition
            }
            _ => Kind::Internal,
        };
        AgentError::new(
            kind,
            format!(
                "{what}: cannot run {}: {e}",
                cmd.get_program().to_string_lossy()
            ),
        )
    })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(AgentError::new(
            Kind::Internal,
            format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_and_failures_say_what_happened() {
        let out = run(Command::new("sh").args(["-c", "echo hi"]), "greet").expect("runs");
        assert_eq!(out, b"hi\n");
        let e = run(
            Command::new("sh").args(["-c", "echo nope >&2; exit 3"]),
            "fail",
        )
        .expect_err("fails");
        assert_eq!(
            (e.kind, e.to_string().contains("fail: nope")),
            (Kind::Internal, true)
        );
        let e = run(&mut Command::new("/nonexistent/tool"), "x").expect_err("missing");
        assert_eq!(e.kind, Kind::FailedPrecondition);
    }
}

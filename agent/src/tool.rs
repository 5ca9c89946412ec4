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

/// A command for `program` that the kernel kills (SIGKILL) when the agent
/// thread that starts it ends: a tool editing what a SIGKILLed agent's
/// recovery removes does not work on for minutes, nor its appliance with
/// it (libguestfs stops its QEMU when the tool goes). util-linux's
/// `setpriv --pdeathsig` sets it and runs the tool in its place (no
/// `pre_exec` hook, no unsafe code). The thread must wait for the tool, as
/// [`run`] and the callers' polling loops do.
pub fn dying_with_agent(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--pdeathsig", "KILL", "--", program]);
    c
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

    /// The tool is killed when the thread that started it ends, even one
    /// that does not wait for it (as when the agent dies).
    #[test]
    fn a_tool_dies_with_the_thread_that_started_it() {
        let mut child = std::thread::spawn(|| {
            let child = dying_with_agent("sleep").arg("600").spawn().expect("spawn");
            // setpriv sets the signal before it becomes the tool: wait
            // for that, then end the thread without waiting for the tool.
            let comm = format!("/proc/{}/comm", child.id());
            while std::fs::read_to_string(&comm).expect("comm") != "sleep\n" {
                std::thread::yield_now();
            }
            child
        })
        .join()
        .expect("thread");
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(nix::sys::signal::Signal::SIGKILL as i32),
            "{status}"
        );
    }
}

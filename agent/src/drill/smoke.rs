//! The policy's smoke-test commands, run against the recovered copy with
//! its address in their environment, each within its timeout.

use std::path::Path;
use std::process::Stdio;

use lifeboat_common::policy::drills::SmokeCommand;
use lifeboat_common::repo::format::drill::Check;

/// The last `n` lines of a command's output, on one line.
fn tail(out: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Runs `smoke` in its directory (default `scratch`) with `env`; it passes
/// by exiting 0 within its timeout.
pub async fn run(smoke: &SmokeCommand, scratch: &Path, env: &[(String, String)]) -> Check {
    let name = format!("smoke: {}", smoke.command.join(" "));
    let mut cmd = tokio::process::Command::new(&smoke.command[0]);
    cmd.args(&smoke.command[1..])
        .current_dir(smoke.dir.as_deref().unwrap_or(scratch))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so what it starts goes with it.
        .process_group(0)
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Check::failed(name, format!("could not start {}: {e}", smoke.command[0])),
    };
    let group = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let waited = tokio::time::timeout(smoke.timeout, child.wait_with_output()).await;
    if let Some(group) = group {
        // Whatever it left running (a server, a browser) is stopped too.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    match waited {
        Err(_) => {
            Check::failed(name, format!("still running after {}: killed", humantime::format_duration(smoke.timeout)))
        }
        Ok(Err(e)) => Check::failed(name, format!("waiting for it: {e}")),
        Ok(Ok(out)) if out.status.success() => Check::passed(name, format!("exit 0: {}", tail(&out.stdout, 3))),
        Ok(Ok(out)) => Check::failed(name, format!("{}: {}{}", out.status, tail(&out.stdout, 3), tail(&out.stderr, 5))),
    }
}

//! The group's fencing command (STONITH: an infrastructure call that cuts
//! the old primary off), run by the leader when it promotes. The agent's
//! own fencing is what the timing guarantees; this is the second line, for
//! a primary whose agent died and left its server running.

use std::process::Stdio;
use std::time::Duration;

use lifeboat_common::policy::failover::Member;

use crate::core::Auditor;

/// How long the command may run.
const FENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// `{host}`, `{source}` and `{group}` in each word, filled in.
fn words(command: &[String], group: &str, old: &Member) -> Vec<String> {
    command
        .iter()
        .map(|w| w.replace("{host}", &old.host).replace("{source}", &old.source).replace("{group}", group))
        .collect()
}

/// Runs the fencing command against `old` in the background; its outcome
/// is logged and audited.
pub fn spawn(auditor: Auditor, group: &str, old: &Member, command: &[String]) {
    let argv = words(command, group, old);
    let (group, old) = (group.to_owned(), old.clone());
    tokio::spawn(async move {
        let target = format!("{group}: {old}");
        let outcome = run(&argv, &group, &old).await;
        match &outcome {
            Ok(()) => tracing::warn!(group, fenced = %old, "fencing command succeeded"),
            Err(e) => tracing::error!(group, fenced = %old, error = e, "fencing command failed"),
        }
        auditor.record("Failover/FenceCommand", &target, outcome.as_ref().map_or_else(|e| e.as_str(), |()| "ok"));
    });
}

async fn run(argv: &[String], group: &str, old: &Member) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else { return Err("the fencing command is empty".into()) };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("LIFEBOAT_GROUP", group)
        .env("LIFEBOAT_FENCED_HOST", &old.host)
        .env("LIFEBOAT_FENCED_SOURCE", &old.source)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(FENCE_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!("{program} did not finish within {}s", FENCE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!("{program} {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let old = Member { host: "fra-db1".into(), source: "orders".into() };
        let command = vec!["/bin/stonith".into(), "--host={host}".into(), "{group}/{source}".into()];
        assert_eq!(words(&command, "orders-db", &old), ["/bin/stonith", "--host=fra-db1", "orders-db/orders"]);
    }
}

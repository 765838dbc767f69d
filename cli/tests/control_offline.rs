//! The control plane's offline commands: `lifeboat audit verify` over a log
//! written by the coordinator's writer, and `lifeboat certs init`.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lifeboat_common::audit::{AuditLog, AuditRecord};
use support::Env;

#[test]
fn audit_verify_passes_a_sound_log_and_names_the_edited_line() {
    let env = Env::new();
    let path = env.path("audit.log");
    let log = AuditLog::open(&path).unwrap();
    let mut head = String::new();
    for (who, result) in
        [("admin:alice", "ok"), ("agent:db-1", "denied: agents may not call Admin"), ("admin:bob", "ok")]
    {
        let record = AuditRecord {
            principal: who.into(),
            role: None,
            action: "Admin/RunBackup".into(),
            target: Some("database.full".into()),
            result: result.into(),
        };
        head = log.append(record).unwrap().hash;
    }
    let file = path.to_str().unwrap();
    let out = env.ok(&["audit", "verify", file, "--head", &head]);
    assert!(out.contains("3 entries, chain intact"), "{out}");

    // The refusal rewritten as a success.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("denied: agents may not call Admin", "ok")).unwrap();
    let err = env.fails(&["audit", "verify", file]);
    assert!(err.contains("line 2") && err.contains("edited"), "{err}");

    // Cut short: the chain left is sound, but it does not end at the head kept elsewhere.
    let first = text.lines().next().unwrap().to_owned() + "\n";
    std::fs::write(&path, first).unwrap();
    env.ok(&["audit", "verify", file]);
    let err = env.fails(&["audit", "verify", file, "--head", &head]);
    assert!(err.contains("rewritten or cut short"), "{err}");
}

#[test]
fn certs_init_makes_a_ca_and_one_certificate_of_each_kind_and_never_replaces_them() {
    let env = Env::new();
    let dir = env.path("certs");
    let out = env.ok(&["certs", "init", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 4, "{out}");
    for kind in ["coordinator-", "agent-", "admin-admin"] {
        assert!(out.lines().any(|l| l.contains(kind)), "{kind} missing: {out}");
    }
    let more = env.ok(&["certs", "init", "--dir", dir.to_str().unwrap(), "--agent", "db-2"]);
    assert_eq!(more.trim(), dir.join("agent-db-2.pem").display().to_string());
    let err = env.fails(&["certs", "init", "--dir", dir.to_str().unwrap(), "--agent", "db-2"]);
    assert!(err.contains("exists already"), "{err}");
    let err = env.fails(&["certs", "init", "--dir", dir.to_str().unwrap(), "--admin", "../root"]);
    assert!(err.contains("letters, digits"), "{err}");
}

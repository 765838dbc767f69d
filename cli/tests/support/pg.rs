//! PostgreSQL helpers of the CLI's tests: a repository the postgres user
//! (running archive_command) can use, and WAL archived on demand.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use lifeboat_integration_tests::postgres::{Cluster, give_to_postgres, workspace_bin};

use super::Env;

/// A local repository and key the postgres user (running archive_command) can use.
pub fn env_for_postgres() -> Env {
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    give_to_postgres(&env.repo);
    give_to_postgres(&env.key);
    env
}

/// Settings that archive WAL with `lifeboat-agent wal-push` into the repository.
pub fn archive_conf(env: &Env) -> String {
    let agent = workspace_bin("lifeboat-agent");
    format!(
        "archive_mode = on\narchive_command = '{} wal-push --repo={} --key-file={} %p'\narchive_timeout = 0\n",
        agent.display(),
        env.repo.display(),
        env.key.display()
    )
}

/// Switches to a new WAL segment and waits until the archiver has stored it.
pub fn archive_current_wal(pg: &Cluster) {
    let segment = pg.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived = pg.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if archived.as_str() >= segment.as_str() {
            return;
        }
        let failed = pg.sql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver");
        assert!(Instant::now() < deadline, "{segment} not archived (last failed: {failed}):\n{}", pg.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

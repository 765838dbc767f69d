//! What every benchmark binary measures with: wall time, CPU and peak
//! memory of a child process, directory sizes, and a cold page cache.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// What one measured command took.
pub struct Measured {
    /// Wall time.
    pub secs: f64,
    /// Peak resident memory.
    pub peak_rss_kib: i64,
    /// User + system CPU time.
    pub cpu_secs: f64,
}

/// Runs a command to completion and returns its wall time and peak RSS.
pub fn measure(cmd: &mut Command) -> Result<Measured> {
    let started = Instant::now();
    let child =
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped; the pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    if r != pid {
        bail!("waiting for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("{cmd:?} failed ({status}): {err}");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Measured { secs, peak_rss_kib: usage.ru_maxrss, cpu_secs: tv(usage.ru_utime) + tv(usage.ru_stime) })
}

/// Bytes the files below `path` take on disk.
pub fn du(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else {
            total += m.len();
        }
    }
    total
}
/// Empties the page cache, so a restore reads its repository from disk as it
/// would after a disaster, not from memory the backup just filled (which
/// would favour whichever tool's writes stayed cached).
pub fn drop_caches() {
    if fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
        eprintln!("note: cannot drop the page cache (not root): restores read a warm repository");
    }
}

/// Flushes dirty pages so one tool's writes are not charged to the next.
pub fn sync_and_settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `lifeboat` and `lifeboat-agent` beside the running benchmark binary.
pub fn lifeboat_binaries() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::env::current_exe()?.parent().context("binary directory")?.to_owned();
    let (lifeboat, agent) = (dir.join("lifeboat"), dir.join("lifeboat-agent"));
    if !lifeboat.exists() || !agent.exists() {
        bail!("build lifeboat and lifeboat-agent first (cargo build --release --workspace)");
    }
    Ok((lifeboat, agent))
}

/// `work` emptied (or made), and open to the postgres user a benchmark's
/// cluster runs as.
pub fn fresh_work_dir(work: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    fs::create_dir_all(work)?;
    fs::set_permissions(work, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Where [`pgbackrest_setup`] writes pgBackRest's configuration.
pub fn pgbackrest_conf(work: &Path) -> std::path::PathBuf {
    work.join("pgbackrest.conf")
}

/// pgBackRest beside Lifeboat on cluster `pg`: its directories under
/// `work` and stanza `bench`'s configuration (zstd, `process-max` = cores,
/// encrypted like every Lifeboat repository), `global` lines added.
pub fn pgbackrest_setup(work: &Path, pg: &crate::postgres::Cluster, global: &str) -> Result<std::path::PathBuf> {
    for d in ["pgbackrest-repo", "pgbackrest-log", "pgbackrest-lock", "pgbackrest-spool"] {
        fs::create_dir_all(work.join(d))?;
        crate::postgres::give_to_postgres(&work.join(d));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let conf = pgbackrest_conf(work);
    fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=bench-only-passphrase\nprocess-max={cores}\ncompress-type=zst\nstart-fast=y\n{global}log-level-console=warn\nlog-level-file=off\nlock-path={}\nspool-path={}\n\n[bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
            work.join("pgbackrest-repo").display(),
            work.join("pgbackrest-lock").display(),
            work.join("pgbackrest-spool").display(),
            pg.pgdata.display(),
            pg.port,
            pg.run_dir.display()
        ),
    )?;
    Ok(conf)
}

/// `pgbackrest --config=CONF --stanza=bench ARGS`, as the postgres user.
pub fn pgbackrest(conf: &Path, args: &[&str]) -> Command {
    let mut c = crate::postgres::as_postgres(Path::new("/usr/bin/pgbackrest"));
    c.arg(format!("--config={}", conf.display())).arg("--stanza=bench").args(args);
    c
}

/// The benchmarks' database on `pg`: a frozen append-mostly `history` of
/// about `gib` GiB and a `hot` table of `hot_rows`, checkpointed; returns
/// the history's row count.
pub fn history_database(pg: &crate::postgres::Cluster, gib: f64, hot_rows: u64) -> u64 {
    let rows = (gib * 4_000_000.0) as u64;
    pg.sql("CREATE TABLE history (id bigint, at timestamptz, payload text)");
    pg.sql(&format!(
        "INSERT INTO history SELECT g, now() - g * interval '1 second', md5(g::text) || repeat('h', 150) FROM generate_series(1, {rows}) g"
    ));
    pg.sql("CREATE TABLE hot (id int PRIMARY KEY, v bigint, note text)");
    pg.sql(&format!("INSERT INTO hot SELECT g, 0, repeat('n', 100) FROM generate_series(1, {hot_rows}) g"));
    // A history table lives long: frozen by vacuum well before any backup
    // (otherwise the first vacuum after the full backup rewrites every page
    // for both tools, whenever autovacuum happens to run).
    pg.sql("VACUUM (FREEZE, ANALYZE)");
    pg.sql("CHECKPOINT");
    rows
}

//! A restored directory's owner: files written into it are given to it,
//! and a server started on it runs as it (PostgreSQL refuses root, and a
//! Redis running as root would leave files its own user cannot replace).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Gives `path` the owner and group of `dir`.
pub fn give_to_owner_of(dir: &Path, path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
}

/// Has `cmd` run as the owner of `dir` when this process is root and the
/// owner is not.
pub fn run_as_owner_of(cmd: &mut Command, dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    if rustix::process::geteuid().is_root() && meta.uid() != 0 {
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    Ok(())
}

/// The name of `dir`'s owner, as `/etc/passwd` gives it (PostgreSQL's
/// bootstrap superuser is named after the user who ran `initdb`, which
/// owns the data directory).
pub fn owner_name(dir: &Path) -> Option<String> {
    let uid = std::fs::metadata(dir).ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// The last `lines` lines of a server's log, for an error message.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

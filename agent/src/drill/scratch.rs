//! A drill's scratch directory: refused where it would touch production,
//! recorded by a marker before anything is made in it, and removed with
//! every process still running in it, at the drill's end or, after a
//! crash, when the agent (or the next offline drill) starts.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A path the scratch directory must not overlap, and what it is.
#[derive(Debug, Clone)]
pub struct Protected {
    /// What it is (`source orders's data directory`).
    pub what: String,
    /// The path.
    pub path: PathBuf,
}

/// `path` made absolute and with its links resolved as far as it exists
/// (a scratch directory need not exist yet), `.` and `..` applied after.
fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let parts: Vec<Component> = path.components().collect();
    for n in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..n].iter().collect();
        let Ok(mut real) = std::fs::canonicalize(&prefix) else { continue };
        for part in &parts[n..] {
            match part {
                Component::ParentDir => {
                    real.pop();
                }
                Component::Normal(name) => real.push(name),
                _ => {}
            }
        }
        return real;
    }
    path
}

/// Why `scratch` may not be used: it lies inside a protected path or holds one.
pub fn overlap(scratch: &Path, protected: &[Protected]) -> Option<String> {
    let scratch = resolved(scratch);
    protected.iter().find_map(|p| {
        let path = resolved(&p.path);
        if scratch.starts_with(&path) {
            Some(format!(
                "scratch directory {} lies inside {} ({}): a drill never touches production",
                scratch.display(),
                p.what,
                path.display()
            ))
        } else if path.starts_with(&scratch) {
            Some(format!(
                "scratch directory {} holds {} ({}): a drill never touches production",
                scratch.display(),
                p.what,
                path.display()
            ))
        } else {
            None
        }
    })
}

/// A port nothing listens on, none of `production`'s.
pub fn free_port(production: &[u16]) -> io::Result<u16> {
    for _ in 0..64 {
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        if !production.contains(&port) {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port found that no production server uses"))
}

/// What a marker records: enough to find and remove a drill's leftovers,
/// and to report the run as cut short.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// The drill run's id.
    pub id: String,
    /// The drill's name.
    pub drill: String,
    /// Its kind.
    pub kind: String,
    /// Where recovery was to stop.
    pub target: String,
    /// When it started.
    pub started: chrono::DateTime<chrono::Utc>,
    /// Its scratch directory.
    pub dir: PathBuf,
    /// The process that ran it.
    pub pid: u32,
    /// When that process started (clock ticks after boot), so a pid used
    /// again by another process is not taken for it.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// Its report was stored: what is left is only to remove.
    #[serde(default)]
    pub reported: bool,
    /// Keep the restored data (its servers are stopped all the same).
    pub keep: bool,
    /// The agent job it runs as, if it does.
    #[serde(default)]
    pub job: Option<String>,
}

/// When process `pid` started, in clock ticks after boot (`/proc/PID/stat`'s
/// 22nd field), if it runs.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Marker {
    /// Whether the process that wrote it still runs (and is not this one).
    fn owner_alive(&self) -> bool {
        self.pid != std::process::id() && process_start(self.pid).is_some_and(|s| self.pid_start.is_none_or(|p| p == s))
    }
}

/// Where markers live: `<state dir>/drills/`.
pub fn markers_dir() -> PathBuf {
    lifeboat_common::dirs::state_dir().join("drills")
}

impl Marker {
    fn path(&self) -> PathBuf {
        markers_dir().join(format!("{}.json", self.id))
    }

    /// Writes it, durably, before anything is made in the directory.
    pub fn write(&self) -> io::Result<()> {
        let dir = markers_dir();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", self.id));
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.path())
    }

    /// Removes it, once the directory is gone (or kept and its servers stopped).
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_file(self.path())
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(marker = %self.path().display(), error = %e, "removing a drill's marker");
        }
    }
}

/// Processes whose working directory lies in `dir` (a server started there).
fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .collect()
}

/// Kills every process running in `dir` and waits until they are gone.
pub fn kill_servers_in(dir: &Path) -> Result<usize, String> {
    let dir = resolved(dir);
    let started = Instant::now();
    let mut killed = 0;
    loop {
        let pids = processes_in(&dir);
        if pids.is_empty() {
            return Ok(killed);
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("processes {pids:?} still run in {} after 30s", dir.display()));
        }
        for pid in pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid)
                && rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok()
            {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the drill's servers and (unless kept) its directory, then its
/// marker. What cannot be removed is returned, and the marker kept.
pub fn clean(marker: &Marker) -> Result<(), String> {
    // A marker names its run's own directory, nothing else.
    if marker.dir.file_name() != Some(std::ffi::OsStr::new(&marker.id)) {
        return Err(format!(
            "marker {} names {}, not a directory of its own: left alone",
            marker.id,
            marker.dir.display()
        ));
    }
    kill_servers_in(&marker.dir)?;
    if !marker.keep {
        // A restore cut short by a timeout may still be writing its last
        // files for a moment: a few tries, the servers killed each time.
        let mut tries = 0;
        loop {
            match std::fs::remove_dir_all(&marker.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if tries >= 5 => return Err(format!("removing {}: {e}", marker.dir.display())),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_secs(1));
                    kill_servers_in(&marker.dir)?;
                }
            }
        }
    }
    marker.remove();
    Ok(())
}

/// A drill found left behind, and what became of it.
#[derive(Debug)]
pub struct Leftover {
    /// Its marker.
    pub marker: Marker,
    /// Why it could not be removed, if it could not.
    pub error: Option<String>,
}

/// Every marker, and those that cannot be read (logged).
fn markers() -> Vec<Marker> {
    let Ok(entries) = std::fs::read_dir(markers_dir()) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => found.push(m),
            Err(e) => tracing::warn!(marker = %path.display(), error = %e, "an unreadable drill marker"),
        }
    }
    found
}

/// Kills what still runs in the scratch of the drills this process runs
/// (it is stopping); their markers stay, for the next start to report them.
pub fn stop_own_servers() {
    for marker in markers().into_iter().filter(|m| m.pid == std::process::id()) {
        if let Err(e) = kill_servers_in(&marker.dir) {
            tracing::error!(drill = marker.id, error = e, "stopping a drill's servers");
        }
    }
}

/// Removes what drills left behind: those `which` picks among the ones
/// whose process no longer runs (or is this one, for a job it cancelled).
pub fn clean_leftovers(which: impl Fn(&Marker) -> bool) -> Vec<Leftover> {
    let mut found = Vec::new();
    for marker in markers() {
        if marker.owner_alive() || !which(&marker) {
            continue;
        }
        let error = clean(&marker).err();
        match &error {
            None => {
                tracing::warn!(drill = marker.id, dir = %marker.dir.display(), "removed what a drill cut short left behind")
            }
            Some(e) => {
                tracing::error!(drill = marker.id, error = e, "could not remove what a drill cut short left behind")
            }
        }
        found.push(Leftover { marker, error });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_either_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pg");
        std::fs::create_dir(&pgdata).unwrap();
        let protected = [Protected { what: "source orders's data directory".into(), path: pgdata.clone() }];
        let inside = overlap(&pgdata.join("drills/x"), &protected).unwrap();
        assert!(inside.contains("lies inside source orders's data directory"), "{inside}");
        let holds = overlap(dir.path(), &protected).unwrap();
        assert!(holds.contains("holds"), "{holds}");
        // Through a link, and with `..`.
        std::os::unix::fs::symlink(&pgdata, dir.path().join("link")).unwrap();
        assert!(overlap(&dir.path().join("link/sub"), &protected).is_some());
        assert!(overlap(&dir.path().join("other/../pg/sub"), &protected).is_some());
        assert!(overlap(&dir.path().join("scratch"), &protected).is_none());
        assert!(overlap(&dir.path().join("pgx"), &protected).is_none());
    }
}

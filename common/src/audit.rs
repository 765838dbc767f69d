//! The audit log: one JSON line per admin call (who, what, when, result),
//! each carrying its sequence number, the hash of the entry before it and
//! its own BLAKE3 hash, so an edited, removed, inserted or reordered entry
//! breaks the chain where it happened. (Whoever can rewrite the whole file
//! can rebuild the chain from there on: comparing the head with a copy kept
//! elsewhere, `verify --head`, catches that and a cut-off tail.)

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `prev` of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What went wrong with the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the file failed.
    #[error("{op} audit log {path}: {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        cause: std::io::Error,
    },
    /// An entry could not be serialised: nothing was written.
    #[error("encoding an audit entry: {0}")]
    Encode(serde_json::Error),
    /// The chain is broken: the log was edited.
    #[error("audit log {path}, line {line}: {reason}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// The first line that does not follow from the ones before.
        line: u64,
        /// How.
        reason: String,
    },
}

/// What an audited call was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Who: the identity of the client certificate.
    pub principal: String,
    /// The role it acted in, if it has one.
    pub role: Option<String>,
    /// The call (`Admin/RunBackup`, ...).
    pub action: String,
    /// What it was about (a source, a job, a snapshot), if anything.
    pub target: Option<String>,
    /// `ok`, or the refusal or error.
    pub result: String,
}

/// The hashed part of an entry, in a fixed field order.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a DateTime<Utc>,
    #[serde(flatten)]
    record: &'a AuditRecord,
    prev: &'a str,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1 for the first entry, then one more each.
    pub seq: u64,
    /// When the call was answered.
    pub time: DateTime<Utc>,
    /// The call.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The hash of the entry before (zeros for the first).
    pub prev: String,
    /// BLAKE3 of this entry without this field.
    pub hash: String,
}

impl AuditEntry {
    fn computed_hash(&self) -> Result<String, AuditError> {
        let body = Body { seq: self.seq, time: &self.time, record: &self.record, prev: &self.prev };
        let bytes = serde_json::to_vec(&body).map_err(AuditError::Encode)?;
        Ok(blake3::hash(&bytes).to_hex().to_string())
    }
}

/// An audit log open for appending.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
}

#[derive(Debug)]
struct Tail {
    file: File,
    seq: u64,
    hash: String,
}

impl AuditLog {
    /// Opens (creating) the log at `path`, checking the whole chain first:
    /// a log that was tampered with is not appended to.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |op| move |cause| AuditError::Io { op, path: path.to_owned(), cause };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        }
        let file = OpenOptions::new().create(true).append(true).read(true).open(path).map_err(io("opening"))?;
        let (seq, hash) = match verify(path)? {
            Verified { entries: 0, .. } => (0, GENESIS.to_owned()),
            Verified { entries, head } => (entries, head),
        };
        Ok(AuditLog { path: path.to_owned(), tail: Mutex::new(Tail { file, seq, hash }) })
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and syncs it to disk before returning it.
    pub fn append(&self, record: AuditRecord) -> Result<AuditEntry, AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let mut entry =
            AuditEntry { seq: tail.seq + 1, time: Utc::now(), record, prev: tail.hash.clone(), hash: String::new() };
        entry.hash = entry.computed_hash()?;
        let mut line = serde_json::to_vec(&entry).map_err(AuditError::Encode)?;
        line.push(b'\n');
        let io = |op| move |cause| AuditError::Io { op, path: self.path.clone(), cause };
        tail.file.write_all(&line).map_err(io("appending to"))?;
        tail.file.sync_data().map_err(io("syncing"))?;
        tail.seq = entry.seq;
        tail.hash = entry.hash.clone();
        Ok(entry)
    }
}

/// What a sound log holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// How many entries.
    pub entries: u64,
    /// The last entry's hash (zeros for an empty log): compare it with a
    /// copy kept elsewhere to catch a log rewritten or cut from some point.
    pub head: String,
}

/// Checks every entry of the log at `path` follows from the ones before.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    Ok(walk(path, 0)?.0)
}

/// Checks the whole log, and returns its last `n` entries, oldest first.
pub fn tail(path: &Path, n: usize) -> Result<(Verified, Vec<AuditEntry>), AuditError> {
    let (verified, kept) = walk(path, n)?;
    Ok((verified, kept.into()))
}

fn walk(path: &Path, keep: usize) -> Result<(Verified, VecDeque<AuditEntry>), AuditError> {
    let file = File::open(path).map_err(|cause| AuditError::Io { op: "reading", path: path.to_owned(), cause })?;
    let broken = |line: u64, reason: String| AuditError::Broken { path: path.to_owned(), line, reason };
    let (mut seq, mut head) = (0u64, GENESIS.to_owned());
    let mut kept = VecDeque::with_capacity(keep.min(1024));
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.map_err(|cause| AuditError::Io { op: "reading", path: path.to_owned(), cause })?;
        let entry: AuditEntry = serde_json::from_str(&line).map_err(|e| broken(n, format!("not an entry: {e}")))?;
        if entry.seq != seq + 1 {
            return Err(broken(n, format!("entry {} follows entry {seq}: entries were removed or moved", entry.seq)));
        }
        if entry.prev != head {
            return Err(broken(
                n,
                "does not follow the entry before it: an entry before was changed or removed".into(),
            ));
        }
        if entry.computed_hash()? != entry.hash {
            return Err(broken(n, "its content does not match its hash: it was edited".into()));
        }
        seq = entry.seq;
        head.clone_from(&entry.hash);
        if keep > 0 {
            if kept.len() == keep {
                kept.pop_front();
            }
            kept.push_back(entry);
        }
    }
    Ok((Verified { entries: seq, head }, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> AuditRecord {
        AuditRecord {
            principal: "admin:alice".into(),
            role: Some("operator".into()),
            action: "Admin/RunBackup".into(),
            target: Some(format!("source-{i}")),
            result: "ok".into(),
        }
    }

    #[test]
    fn the_chain_catches_edits_removals_and_reordering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.log");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..5 {
            log.append(record(i)).unwrap();
        }
        drop(log);
        // Reopened, it goes on from where it was.
        let log = AuditLog::open(&path).unwrap();
        let sixth = log.append(record(5)).unwrap();
        assert_eq!(sixth.seq, 6);
        let good = verify(&path).unwrap();
        assert_eq!((good.entries, good.head.as_str()), (6, sixth.hash.as_str()));

        let lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
        let check = |lines: &[String], line: u64, what: &str| {
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            let err = verify(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("line {line}:")) && err.contains(what), "{err}");
            assert!(AuditLog::open(&path).is_err(), "a broken log was opened for appending");
        };
        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"ok\"", "\"denied\"");
        check(&edited, 3, "edited");
        let mut removed = lines.clone();
        removed.remove(3);
        check(&removed, 4, "removed or moved");
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        check(&swapped, 2, "removed or moved");
        // Rebuilt from entry 3 on with other content: every entry's own hash
        // is right, but entry 3 no longer follows entry 2.
        let mut forged: AuditEntry = serde_json::from_str(&lines[2]).unwrap();
        forged.record.principal = "admin:mallory".into();
        forged.prev = GENESIS.into();
        forged.hash = forged.computed_hash().unwrap();
        let mut rebuilt = lines.clone();
        rebuilt[2] = serde_json::to_string(&forged).unwrap();
        check(&rebuilt, 3, "does not follow");
    }
}

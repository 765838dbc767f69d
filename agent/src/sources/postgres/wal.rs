//! WAL archiving: one sealed object per WAL file, `wal/<timeline>/<name>`,
//! written create-if-absent so a file archived twice is checked, never
//! replaced.

use lifeboat_common::repo::format::layout::WAL_KIND;
use std::path::Path;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::format::object;
pub use lifeboat_common::repo::format::wal::STREAMING_SUFFIX;
use lifeboat_common::repo::format::wal::{Lsn, Segment, Timeline, WalFile, WalNameError, timeline_prefix};
use lifeboat_common::store::StoreError;

use super::PgError;
use super::wal_records::valid_end;

/// zstd level for WAL: archiving must keep up with a busy primary, and WAL
/// (mostly page images and zero-filled tails) compresses well even at 1.
const WAL_COMPRESSION: i32 = 1;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored now.
    Stored,
    /// Already stored with the same content (PostgreSQL retried).
    AlreadyThere,
}

/// Whether `name` is a whole WAL segment's name (24 upper-case hex digits).
pub fn is_segment(name: &str) -> bool {
    name.parse::<Segment>().is_ok()
}

/// The first LSN of WAL segment `name`.
pub fn segment_start(name: &str, segment_size: u64) -> Option<u64> {
    Some(name.parse::<Segment>().ok()?.start(segment_size).0)
}

/// The name of the segment of `timeline` holding `lsn` (the inverse of
/// [`segment_start`]).
pub fn segment_name(timeline: u32, lsn: u64, segment_size: u64) -> String {
    Segment::holding(Timeline(timeline), Lsn(lsn), segment_size).to_string()
}

/// The WAL file name of `path` (PostgreSQL's `%p`), checked.
pub fn wal_name(path: &Path) -> Result<String, PgError> {
    let name =
        path.file_name().and_then(|n| n.to_str()).ok_or_else(|| WalNameError::FileName(path.display().to_string()))?;
    wal_key(name)?;
    Ok(name.to_owned())
}

/// The store key of WAL file `name`: a segment (`000000010000000000000003`,
/// optionally `.partial`, or `.stream` while streamed), a timeline history
/// (`00000002.history`) or a backup history file (`….00000028.backup`).
pub fn wal_key(name: &str) -> Result<String, PgError> {
    Ok(name.parse::<WalFile>()?.key())
}

/// Archives the WAL file at `path` (PostgreSQL's `%p`). Returns once the
/// file is durable in the repository by its write policy. A file already
/// archived with the same content succeeds; with different content fails.
#[tracing::instrument(skip(repo))]
pub async fn push(repo: &Repository, path: &Path) -> Result<Pushed, PgError> {
    push_hashed(repo, path).await.map(|(p, _)| p)
}

/// [`push`], also returning the BLAKE3 hash of the file's content.
pub async fn push_hashed(repo: &Repository, path: &Path) -> Result<(Pushed, blake3::Hash), PgError> {
    let name = wal_name(path)?;
    let content = tokio::fs::read(path).await.map_err(PgError::io("reading", path))?;
    push_content(repo, &name, content).await
}

/// Compresses and seals WAL content to be stored under `key`, off the
/// async threads (hashing, compressing and sealing 16 MiB is CPU work);
/// also returns its hash.
pub async fn seal(repo: &Repository, key: &str, content: Vec<u8>) -> Result<(Bytes, blake3::Hash), PgError> {
    let (r, key) = (repo.clone(), key.to_owned());
    let sealed = tokio::task::spawn_blocking(move || {
        let digest = blake3::hash(&content);
        object::seal(r.keyring(), WAL_KIND, &key, content, WAL_COMPRESSION).map(|s| (Bytes::from(s), digest))
    })
    .await
    .map_err(|_| PgError::Usage("sealing a WAL file panicked".into()))?;
    Ok(sealed?)
}

/// Archives WAL file `name` with `content`: create-if-absent, and the same
/// content already stored under that name counts as success.
pub async fn push_content(repo: &Repository, name: &str, content: Vec<u8>) -> Result<(Pushed, blake3::Hash), PgError> {
    let key = wal_key(name)?;
    let (sealed, digest) = seal(repo, &key, content).await?;
    match repo.store().put_if_absent(&key, sealed).await {
        Ok(()) => Ok((Pushed::Stored, digest)),
        Err(StoreError::AlreadyExists { .. }) => {
            let existing = repo.store().get(&key).await?;
            let plain = object::open(repo.keyring(), WAL_KIND, &key, &existing)?;
            if blake3::hash(&plain) == digest {
                Ok((Pushed::AlreadyThere, digest))
            } else {
                Err(PgError::Conflict { name: name.to_owned() })
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// What [`fetch`] restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The whole file.
    Whole,
    /// A segment as far as it was streamed so far.
    Partial,
    /// Nothing: the repository does not have it (or the server's own copy
    /// holds more).
    Missing,
}

/// Restores WAL file `name` to `dest` (PostgreSQL's `%f` and `%p`);
/// writes nothing when the repository does not have it.
#[tracing::instrument(skip(repo))]
pub async fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<Restored, PgError> {
    match read(repo, name).await? {
        // Not found, for PostgreSQL: it reads its own copy from pg_wal instead.
        Some(found) if found.partial && streamed_further(dest, name, &found.content) => Ok(Restored::Missing),
        Some(found) => {
            write_whole(dest, &found.content).await?;
            Ok(if found.partial { Restored::Partial } else { Restored::Whole })
        }
        None => Ok(Restored::Missing),
    }
}

/// Whether the server's own copy of segment `name` in `pg_wal` (beside
/// `dest`), written by a WAL receiver streaming from a primary, holds more
/// WAL than the repository's `partial` one. Handed the shorter copy, a
/// standby that already replayed past its end would stop, unable to read
/// its last record again.
fn streamed_further(dest: &Path, name: &str, partial: &[u8]) -> bool {
    let Ok(own) = std::fs::read(dest.with_file_name(name)) else { return false };
    let Some(start) = segment_start(name, partial.len() as u64) else { return false };
    let (own_end, partial_end) = (valid_end(&own, start), valid_end(partial, start));
    if own_end > partial_end {
        tracing::info!(
            segment = name,
            ?own_end,
            ?partial_end,
            "the server's own copy holds more WAL: it reads that one"
        );
    }
    own_end > partial_end
}

/// A WAL file read back from the repository.
pub struct Fetched {
    /// Its content.
    pub content: Vec<u8>,
    /// Whether it is a segment streamed only in part so far.
    pub partial: bool,
}

/// Reads WAL file `name`. A segment only streamed so far comes from its
/// latest upload (the end of the WAL there is). `None` when the
/// repository has neither.
pub async fn read(repo: &Repository, name: &str) -> Result<Option<Fetched>, PgError> {
    let mut keys = vec![(wal_key(name)?, false)];
    if is_segment(name) {
        keys.push((wal_key(&format!("{name}{STREAMING_SUFFIX}"))?, true));
    }
    for (key, partial) in keys {
        match repo.store().get(&key).await {
            Ok(sealed) => {
                let content = object::open(repo.keyring(), WAL_KIND, &key, &sealed)?;
                return Ok(Some(Fetched { content, partial }));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Writes `content` to `dest` whole or not at all: PostgreSQL must never
/// read a half-written segment.
pub async fn write_whole(dest: &Path, content: &[u8]) -> Result<(), PgError> {
    let tmp = dest.with_extension("lifeboat-tmp");
    tokio::fs::write(&tmp, content).await.map_err(PgError::io("writing", &tmp))?;
    tokio::fs::rename(&tmp, dest).await.map_err(PgError::io("placing", dest))
}

/// The segment after `name` (same timeline), for segments of `segment_size` bytes.
pub fn next_segment(name: &str, segment_size: u64) -> Option<String> {
    Some(name.parse::<Segment>().ok()?.next(segment_size)?.to_string())
}

/// The archived segments of `timeline` (names, sorted), counting a
/// segment streamed only in part as present: it is where recovery ends.
pub async fn archived_segments(repo: &Repository, timeline: u32) -> Result<Vec<String>, PgError> {
    Ok(archived_segment_times(repo, timeline).await?.into_keys().collect())
}

/// [`archived_segments`] with when each was last stored, if the store says.
pub async fn archived_segment_times(
    repo: &Repository,
    timeline: u32,
) -> Result<std::collections::BTreeMap<String, Option<DateTime<Utc>>>, PgError> {
    let prefix = timeline_prefix(Timeline(timeline));
    let mut out = std::collections::BTreeMap::new();
    for meta in repo.store().list(&prefix).await? {
        let Some(name) = meta.key.strip_prefix(&prefix) else { continue };
        let name = name.strip_suffix(STREAMING_SUFFIX).unwrap_or(name);
        if is_segment(name) {
            let at: &mut Option<DateTime<Utc>> = out.entry(name.to_owned()).or_default();
            *at = (*at).max(meta.modified);
        }
    }
    Ok(out)
}

/// Checks, before anything is restored, that the archive holds every
/// segment from `start` to `stop` (what makes a base backup consistent),
/// and returns the last segment of the unbroken run that follows, with the
/// first segment missing before later ones, if the run has a gap.
pub fn check_chain(
    archived: &[String],
    start: &str,
    stop: &str,
    segment_size: u64,
) -> Result<(String, Option<String>), PgError> {
    let have: std::collections::HashSet<&str> = archived.iter().map(String::as_str).collect();
    let mut cur = start.to_owned();
    loop {
        if !have.contains(cur.as_str()) {
            return Err(PgError::Usage(format!(
                "WAL segment {cur} is missing from the repository: the base backup needs every segment from {start} to {stop} to be consistent"
            )));
        }
        if cur.as_str() >= stop {
            break;
        }
        cur = next_segment(&cur, segment_size).ok_or_else(|| PgError::from(WalNameError::FileName(cur.clone())))?;
    }
    while let Some(next) = next_segment(&cur, segment_size) {
        if !have.contains(next.as_str()) {
            let later = archived.iter().any(|n| n.as_str() > next.as_str());
            return Ok((cur, later.then_some(next)));
        }
        cur = next;
    }
    Ok((cur, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::postgres::wal_records::tests::segment_of;

    #[test]
    fn a_partial_segment_is_not_handed_over_a_longer_streamed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000003";
        let dest = dir.path().join("RECOVERYXLOG");
        let (shorter, _) = segment_of(&[100, 9000, 57]);
        let (longer, _) = segment_of(&[100, 9000, 57, 300]);
        // No copy of its own: the repository's is handed over.
        assert!(!streamed_further(&dest, name, &shorter));
        // Its own copy reaches one record further, in the same page.
        std::fs::write(dir.path().join(name), &longer).unwrap();
        assert!(streamed_further(&dest, name, &shorter));
        assert!(!streamed_further(&dest, name, &longer));
        std::fs::write(dir.path().join(name), &shorter).unwrap();
        assert!(!streamed_further(&dest, name, &longer));
    }

    #[test]
    fn chains_and_gaps() {
        let mb16 = 16 << 20;
        assert_eq!(next_segment("0000000100000000000000FF", mb16).unwrap(), "000000010000000100000000");
        assert_eq!(next_segment("000000010000000000000003", mb16).unwrap(), "000000010000000000000004");
        for name in ["0000000100000000000000FF", "000000020000000A00000003"] {
            let tli = u32::from_str_radix(&name[..8], 16).unwrap();
            assert_eq!(segment_name(tli, segment_start(name, mb16).unwrap() + 5, mb16), name);
        }
        let names = |r: std::ops::RangeInclusive<u32>| -> Vec<String> {
            r.map(|s| format!("0000000100000000{s:08X}")).collect()
        };
        let mut archived = names(2..=9);
        let (last, gap) = check_chain(&archived, &archived[0].clone(), &archived[1].clone(), mb16).unwrap();
        assert_eq!((last.as_str(), gap), ("000000010000000000000009", None));
        archived.remove(4);
        let (last, gap) = check_chain(&archived, &archived[0].clone(), &archived[1].clone(), mb16).unwrap();
        assert_eq!(last, "000000010000000000000005");
        assert_eq!(gap.as_deref(), Some("000000010000000000000006"));
        let err = check_chain(&archived, "000000010000000000000001", "000000010000000000000003", mb16).unwrap_err();
        assert!(err.to_string().contains("000000010000000000000001 is missing"), "{err}");
    }

    #[test]
    fn wal_names() {
        assert_eq!(wal_key("000000010000000000000003").unwrap(), "wal/00000001/000000010000000000000003");
        assert_eq!(wal_key("00000002.history").unwrap(), "wal/00000002/00000002.history");
        wal_key("000000010000000000000003.partial").unwrap();
        wal_key("000000010000000000000003.stream").unwrap();
        wal_key("000000010000000000000002.00000028.backup").unwrap();
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000003",
            "0000000100000000000000zz",
            "00000002.history.x",
            "000000010000000000000002.28.backup",
            "000000010000000000000003.partial/..",
        ] {
            assert!(wal_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}

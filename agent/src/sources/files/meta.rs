//! Converting between `std::fs::Metadata` and the repository's node metadata.

use std::os::unix::fs::MetadataExt;

use lifeboat_common::repo::format::tree::Metadata;

/// Repository metadata of a file-system entry (from `lstat`).
pub(crate) fn from_fs(m: &std::fs::Metadata) -> Metadata {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Metadata {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        atime_ns: ns(m.atime(), m.atime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        inode: m.ino(),
        dev: m.dev(),
        nlink: m.nlink(),
    }
}

/// True if a file looks unchanged since `old` was recorded, so its content
/// need not be read again.
pub(crate) fn unchanged(old: &Metadata, new: &Metadata) -> bool {
    old.size == new.size && old.mtime_ns == new.mtime_ns && old.ctime_ns == new.ctime_ns && old.inode == new.inode
}

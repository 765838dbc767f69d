//! File-system calls through directory descriptors that never follow a
//! symbolic link, so a user who swaps a directory for a link while the agent
//! (often root) walks or restores a tree cannot point it anywhere else.
//!
//! Every open names one entry of a directory already open (`openat` with
//! `O_NOFOLLOW`), or a path below a directory with `openat2`'s
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, falling back to opening one
//! component at a time where the kernel lacks `openat2`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use lifeboat_common::repo::format::tree::{Metadata, Xattr};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// An open directory and the path it was opened as (for messages and filters).
#[derive(Debug)]
pub(crate) struct DirHandle {
    /// The descriptor.
    pub fd: OwnedFd,
    /// Where it was when opened.
    pub path: PathBuf,
}

/// Flags for reading a file that is never followed through a link, never
/// becomes the controlling terminal, and never blocks the open itself (a
/// FIFO swapped in for a file would wait for a writer forever).
const READ_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC).union(OFlags::NOCTTY).union(OFlags::NONBLOCK);

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// The metadata of entry `name` of `dir`, not following a link.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The names in a directory, sorted, without `.` and `..`.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = Vec::with_capacity(64 * 1024);
    buf.resize(64 * 1024, std::mem::MaybeUninit::uninit());
    // A duplicate, so reading the listing does not move the shared
    // descriptor's position that other openat calls do not care about.
    let fd = rustix::fs::openat(dir, c".", DIR_FLAGS, Mode::empty())?;
    let mut raw = rustix::fs::RawDir::new(&fd, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = raw.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// True when `a` and `b` describe the same file (device and inode) of the
/// same type: what was opened is what was listed.
pub(crate) fn same_file(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev
        && a.st_ino == b.st_ino
        && FileType::from_raw_mode(a.st_mode) == FileType::from_raw_mode(b.st_mode)
}

/// Why an entry could not be opened as the one listed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Something else stands at the name now.
    #[error("replaced while the backup ran (listed as one file, found another): left out")]
    Replaced,
}

/// Opens the directory `name` of `dir`, checking it is the one `listed`.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8], listed: &Stat) -> Result<OwnedFd, OpenError> {
    let fd = rustix::fs::openat(dir, OsStr::from_bytes(name), DIR_FLAGS, Mode::empty()).map_err(replaced_or_io)?;
    check(fd, listed)
}

/// Opens the regular file `name` of `dir` for reading, checking it is the
/// one `listed`. The descriptor stays non-blocking (see [`READ_FLAGS`]).
pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &[u8], listed: &Stat) -> Result<OwnedFd, OpenError> {
    let fd = rustix::fs::openat(dir, OsStr::from_bytes(name), READ_FLAGS, Mode::empty()).map_err(replaced_or_io)?;
    check(fd, listed)
}

fn check(fd: OwnedFd, listed: &Stat) -> Result<OwnedFd, OpenError> {
    let opened = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    if same_file(&opened, listed) { Ok(fd) } else { Err(OpenError::Replaced) }
}

/// A link where a directory or file was listed fails the open with `ELOOP`
/// (or `ENOTDIR`): that is a replaced entry, not an I/O fault.
fn replaced_or_io(e: rustix::io::Errno) -> OpenError {
    if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
        OpenError::Replaced
    } else {
        OpenError::Io(e.into())
    }
}

/// Opens a directory named by an operator (a backup root's parent, a
/// restore target): links in the path are followed, as every tool does
/// for a path it is given; what lies below is then reached without them.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<DirHandle> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    Ok(DirHandle { fd, path: path.to_owned() })
}

/// Opens `rel` (relative, without `..`) below `root` without following any
/// link on the way, including the last component.
pub(crate) fn open_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if rel.as_os_str().is_empty() {
        return Ok(rustix::fs::openat(root, c".", flags, mode)?);
    }
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root, rel, flags, mode, resolve) {
        Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::NAMETOOLONG => {
            open_by_components(root, rel, flags, mode)
        }
        // openat2 refuses to resolve while another rename runs on the
        // filesystem (EAGAIN): the component walk has no such limit.
        Err(e) if e == rustix::io::Errno::AGAIN => open_by_components(root, rel, flags, mode),
        r => Ok(r?),
    }
}

/// [`open_beneath`] one component at a time: no path-length limit, and no
/// link followed at any step.
fn open_by_components(root: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let parts: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "path must be relative and plain")),
        })
        .collect::<io::Result<_>>()?;
    let Some((last, dirs)) = parts.split_last() else {
        return Ok(rustix::fs::openat(root, c".", flags, mode)?);
    };
    let mut current: Option<OwnedFd> = None;
    for part in dirs {
        let at = current.as_ref().map_or(root, |fd| fd.as_fd());
        current = Some(rustix::fs::openat(at, *part, DIR_FLAGS, Mode::empty())?);
    }
    let at = current.as_ref().map_or(root, |fd| fd.as_fd());
    Ok(rustix::fs::openat(at, *last, flags, mode)?)
}

/// Repository metadata of an entry from its `stat`.
#[allow(clippy::unnecessary_cast)] // The field types differ between architectures.
pub(crate) fn metadata(st: &Stat) -> Metadata {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Metadata {
        mode: st.st_mode as u32,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        atime_ns: ns(st.st_atime as i64, st.st_atime_nsec as i64),
        ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        inode: st.st_ino as u64,
        dev: st.st_dev as u64,
        nlink: st.st_nlink as u64,
    }
}

/// The device number of a device node.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn rdev(st: &Stat) -> u64 {
    st.st_rdev as u64
}

/// Whether an extended attribute is kept: user, trusted and security ones,
/// and POSIX ACLs; other `system.*` names are the filesystem's own views
/// (inline data, NFSv4 ACLs) and are not the file's to carry.
fn kept_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name.starts_with(b"security.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// The extended attributes of an open file or directory worth keeping
/// (none where the filesystem has no such thing).
pub(crate) fn xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<Xattr>> {
    let unsupported = |e: rustix::io::Errno| e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::OPNOTSUPP;
    let mut names = Vec::new();
    loop {
        let size = match rustix::fs::flistxattr_query(fd) {
            Ok(0) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        names.resize(size, 0);
        match rustix::fs::flistxattr(fd, &mut names[..]) {
            Ok(n) => {
                names.truncate(n);
                break;
            }
            // Grew between the two calls.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty() && kept_xattr(n)) {
        let name_os = OsStr::from_bytes(name);
        let mut value = Vec::new();
        loop {
            let size = match rustix::fs::fgetxattr_query(fd, name_os) {
                Ok(n) => n,
                // Removed since the listing.
                Err(rustix::io::Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            };
            value.resize(size, 0);
            match rustix::fs::fgetxattr(fd, name_os, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    out.push(Xattr { name: name.to_vec(), value: std::mem::take(&mut value) });
                    break;
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(rustix::io::Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

/// Sets extended attributes on an open file or directory; each failure
/// (a filesystem without them, `trusted.*` as non-root) is one warning.
pub(crate) fn set_xattrs(fd: BorrowedFd<'_>, xattrs: &[Xattr], warnings: &mut Vec<String>, shown: &str) {
    for x in xattrs {
        let name = OsStr::from_bytes(&x.name);
        if let Err(e) = rustix::fs::fsetxattr(fd, name, &x.value, rustix::fs::XattrFlags::empty()) {
            warnings.push(format!("setting extended attribute {} of {shown}: {e}", name.to_string_lossy()));
        }
    }
}

/// Lets this process hold as many descriptors as its hard limit allows: a
/// walk keeps one open per level of depth, and more for work in flight.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "could not raise the descriptor limit");
        }
    }
}

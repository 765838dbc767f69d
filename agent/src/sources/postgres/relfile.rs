//! Relation files: the data directory's (and tablespaces') files made of
//! 8 KiB pages in 1 GiB segments, which PostgreSQL updates in place. They
//! are cut into fixed, page-aligned chunks (a changed page changes one
//! chunk, and a 1 GiB segment is read as parallel ranges) and their page
//! checksums verified.

use std::path::{Path, PathBuf};

use crate::sources::files::FixedChunks;

/// PostgreSQL's page size (BLCKSZ) this code knows.
pub const PAGE_SIZE: usize = 8192;
/// Blocks per 1 GiB relation segment file.
const SEGMENT_BLOCKS: u64 = (1 << 30) / PAGE_SIZE as u64;
/// Relation files are stored in chunks of 64 pages: fine enough that a day
/// of scattered updates stores little, coarse enough that a terabyte is
/// two million index entries.
pub const RELATION_CHUNK: usize = 64 * PAGE_SIZE;

/// Where a cluster's relation files are: its data directory, and each
/// tablespace's directory by OID.
#[derive(Debug, Clone)]
pub struct RelationFiles {
    pgdata: PathBuf,
    tablespaces: Vec<(u32, PathBuf)>,
}

impl RelationFiles {
    /// The relation files under `pgdata` and `tablespaces` (OID, directory).
    pub fn new(pgdata: PathBuf, tablespaces: Vec<(u32, PathBuf)>) -> Self {
        RelationFiles { pgdata, tablespaces }
    }

    /// `path` as PostgreSQL names it from the data directory (a tablespace's
    /// files as under `pg_tblspc/<oid>`).
    pub fn relative(&self, path: &Path) -> Option<PathBuf> {
        if let Ok(r) = path.strip_prefix(&self.pgdata) {
            return Some(r.to_owned());
        }
        self.tablespaces.iter().find_map(|(oid, dir)| {
            path.strip_prefix(dir).ok().map(|r| Path::new("pg_tblspc").join(oid.to_string()).join(r))
        })
    }

    /// The first block number of relation file `path`, `None` for other files.
    pub fn first_block(&self, path: &Path) -> Option<u64> {
        relation_first_block(&self.relative(path)?)
    }
}

impl FixedChunks for RelationFiles {
    fn chunk_size(&self, path: &Path) -> Option<usize> {
        self.first_block(path).map(|_| RELATION_CHUNK)
    }

    fn changes_expected(&self) -> bool {
        true
    }
}

/// Whether a path relative to the data directory is a relation file (main,
/// fsm, vm or init fork, any 1 GiB segment), and its first block number.
pub fn relation_first_block(relative: &Path) -> Option<u64> {
    let top = relative.iter().next()?.to_str()?;
    let in_relation_dir = matches!(top, "global" | "base" | "pg_tblspc");
    let name = relative.file_name()?.to_str()?;
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) => (stem, seg.parse::<u64>().ok()?),
        None => (name, 0),
    };
    let oid = stem.strip_suffix("_fsm").or(stem.strip_suffix("_vm")).or(stem.strip_suffix("_init")).unwrap_or(stem);
    let valid = in_relation_dir && !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit());
    valid.then_some(segment * SEGMENT_BLOCKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_recognised() {
        assert_eq!(relation_first_block(Path::new("base/5/16384")), Some(0));
        assert_eq!(relation_first_block(Path::new("base/5/16384.2")), Some(2 * SEGMENT_BLOCKS));
        assert_eq!(relation_first_block(Path::new("base/5/16384_fsm")), Some(0));
        assert_eq!(relation_first_block(Path::new("global/1262_vm")), Some(0));
        assert_eq!(relation_first_block(Path::new("pg_tblspc/16390/PG_15_202209061/5/16391.1")), Some(SEGMENT_BLOCKS));
        for not in ["global/pg_control", "base/5/pg_filenode.map", "base/5/PG_VERSION", "pg_xact/0000", "base/5/x.1"] {
            assert_eq!(relation_first_block(Path::new(not)), None, "{not}");
        }
        let files = RelationFiles::new("/pg".into(), vec![(16390, "/ts".into())]);
        assert_eq!(files.chunk_size(Path::new("/pg/base/5/16384")), Some(RELATION_CHUNK));
        assert_eq!(files.first_block(Path::new("/ts/PG_15_202209061/5/16391.1")), Some(SEGMENT_BLOCKS));
        assert_eq!(files.chunk_size(Path::new("/pg/postgresql.conf")), None);
        assert_eq!(files.chunk_size(Path::new("/elsewhere/base/5/1")), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_large_relation_file_is_read_in_ranges_checked_and_restored_whole() {
        use std::sync::Arc;

        use lifeboat_common::crypto::MasterKey;
        use lifeboat_common::repo::Repository;
        use lifeboat_common::store::LocalStore;

        use crate::progress::Progress;
        use crate::sources::files::{BackupOptions, RestoreOptions, backup_files, restore_files};
        use crate::sources::postgres::checksum::{PageChecks, page_checksum};

        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pg");
        std::fs::create_dir_all(pgdata.join("base/5")).unwrap();
        // 150 MiB and a page: three ranges, the last one short.
        let pages = 150 * 128 + 1;
        let mut data = vec![0u8; pages * PAGE_SIZE];
        for (block, page) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
            page[14] = 0x20; // pd_upper: an initialised page
            page[24..32].copy_from_slice(&(block as u64).to_le_bytes());
            let array: &[u8; PAGE_SIZE] = (&*page).try_into().unwrap();
            let sum = page_checksum(array, block as u32);
            page[8..10].copy_from_slice(&sum.to_ne_bytes());
        }
        // One damaged page, in the second range.
        data[9000 * PAGE_SIZE + 100] ^= 0xFF;
        let file = pgdata.join("base/5/16384");
        std::fs::write(&file, &data).unwrap();

        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Repository::init(store, &MasterKey::generate().unwrap()).await.unwrap();
        let files = RelationFiles::new(pgdata.clone(), Vec::new());
        let checks = Arc::new(PageChecks::new(files.clone(), u64::MAX));
        let opts = BackupOptions {
            paths: vec![pgdata.clone()],
            hostname: "test".into(),
            force: true,
            content_check: Some(checks.clone()),
            fixed_chunks: Some(Arc::new(files)),
            ..Default::default()
        };
        let outcome = backup_files(&repo, opts, Arc::new(Progress::default())).await.unwrap();
        let (verified, corrupt) = checks.results();
        assert_eq!(corrupt.len(), 1, "{corrupt:?}");
        assert_eq!((corrupt[0].block, corrupt[0].file.as_str()), (9000, "base/5/16384"));
        assert_eq!(verified, pages as u64 - 1);

        let target = dir.path().join("restored");
        let restore =
            RestoreOptions { target: target.clone(), sub_path: Some(file.display().to_string()), ..Default::default() };
        restore_files(&repo, &outcome.snapshot, restore, Arc::new(Progress::default())).await.unwrap();
        assert!(std::fs::read(target.join("16384")).unwrap() == data, "restored content differs");
    }
}

//! Where each kind of object lies in the store: the one table of keys and
//! prefixes every reader and writer of the repository goes by.

use super::id::{IndexId, PackId, SnapshotId};
use super::pack::BlobKind;

/// The repository's format version and tunables, in clear.
pub const CONFIG_KEY: &str = "config";
/// `keys/<master key id>`: the keyring wrapped by one master key.
pub const KEYS_PREFIX: &str = "keys/";
/// `data/<2 hex>/<pack id>`: packs of sealed file chunks.
pub const DATA_PREFIX: &str = "data/";
/// `tree/<2 hex>/<pack id>`: packs of sealed directory trees, kept apart so
/// storage tiers never move what a restore needs to plan.
pub const TREE_PREFIX: &str = "tree/";
/// `index/<id>`: which blob is in which pack.
pub const INDEX_PREFIX: &str = "index/";
/// `snapshots/<id>`: manifests, written last, which make a backup visible.
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";
/// `wal/<timeline>/<name>`: one sealed object per archived WAL file.
pub const WAL_PREFIX: &str = "wal/";
/// `writers/<id>`: the markers of backups in progress, which hold off sweeps.
pub const WRITERS_PREFIX: &str = "writers/";
/// `prune/<id>`: the packs a prune marked, deleted after the grace period.
pub const PRUNE_PREFIX: &str = "prune/";
/// `drills/<id>`: restore drills' reports, kept for as long as the repository.
pub const DRILLS_PREFIX: &str = "drills/";

/// The kind a sealed index object is bound to (with its key), so that one
/// kind of object cannot be passed off as another.
pub const INDEX_KIND: &str = "index";
/// The kind of a sealed snapshot manifest.
pub const SNAPSHOT_KIND: &str = "snapshot";
/// The kind of a sealed prune plan.
pub const PRUNE_PLAN_KIND: &str = "prune plan";
/// The kind of a sealed writer marker.
pub const WRITER_KIND: &str = "writer";
/// The kind of a sealed WAL file.
pub const WAL_KIND: &str = "wal";
/// The kind of a sealed drill report.
pub const DRILL_KIND: &str = "drill report";

/// Every prefix of sealed objects, with the kind they are bound to.
pub const SEALED: [(&str, &str); 6] = [
    (INDEX_PREFIX, INDEX_KIND),
    (SNAPSHOTS_PREFIX, SNAPSHOT_KIND),
    (PRUNE_PREFIX, PRUNE_PLAN_KIND),
    (WRITERS_PREFIX, WRITER_KIND),
    (WAL_PREFIX, WAL_KIND),
    (DRILLS_PREFIX, DRILL_KIND),
];

/// Prefixes under which packs live.
pub const PACK_PREFIXES: [&str; 2] = [DATA_PREFIX, TREE_PREFIX];

/// Prefixes whose objects storage tiers may move to colder classes (packs
/// of file data and old WAL; never metadata nor trees).
pub const TIERED_PREFIXES: [&str; 2] = [DATA_PREFIX, WAL_PREFIX];

/// Store key of a pack: data packs under `data/`, tree packs under
/// `tree/`, so storage tiers can move data and keep every tree hot.
pub fn pack_key(id: &PackId, kind: BlobKind) -> String {
    let hex = id.to_hex();
    let prefix = match kind {
        BlobKind::Data => DATA_PREFIX,
        BlobKind::Tree => TREE_PREFIX,
    };
    format!("{prefix}{}/{hex}", &hex[..2])
}

/// Store key of an index object.
pub fn index_key(id: &IndexId) -> String {
    format!("{INDEX_PREFIX}{id}")
}

/// Store key of a snapshot manifest.
pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("{SNAPSHOTS_PREFIX}{id}")
}

/// Store key of a drill report.
pub fn drill_key(id: &str) -> String {
    format!("{DRILLS_PREFIX}{id}")
}

/// Store key of the keyring wrapped by master key `master_id`.
pub fn keyring_key(master_id: &impl std::fmt::Display) -> String {
    format!("{KEYS_PREFIX}{master_id}")
}

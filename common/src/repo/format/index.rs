//! Index objects (which blob lives in which pack) and the in-memory index
//! built from all of them.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::repo::format::id::{BlobId, PackId};
use crate::repo::format::layout::pack_key;
use crate::repo::format::pack::{BlobKind, PackBlob, PackSeal};

/// One pack as an index object records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexedPack {
    /// The pack.
    pub id: PackId,
    /// Key id and salt, so one blob can be read with a ranged request.
    pub seal: PackSeal,
    /// Stored size in bytes.
    pub size: u64,
    /// Blobs inside it.
    pub blobs: Vec<PackBlob>,
}

/// Contents of an `index/…` object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    /// Packs this index describes.
    pub packs: Vec<IndexedPack>,
}

/// Where to find a blob.
#[derive(Debug, Clone, Copy)]
pub struct BlobLocation<'a> {
    /// The pack holding it.
    pub pack: &'a PackInfo,
    /// Its place in the pack.
    pub blob: &'a PackBlob,
}

/// What the index knows of a pack.
#[derive(Debug, Clone)]
pub struct PackInfo {
    /// The pack.
    pub id: PackId,
    /// Key id and salt.
    pub seal: PackSeal,
    /// Stored size.
    pub size: u64,
    /// What its blobs are (a pack holds one kind).
    pub kind: BlobKind,
}

impl PackInfo {
    /// Its key in the store.
    pub fn key(&self) -> String {
        pack_key(&self.id, self.kind)
    }
}

/// All index objects merged: blob id → pack and position.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, (u32, PackBlob)>,
    /// Further copies of a blob (two writers raced, or a backup stored its
    /// own copy of a blob in a pack marked for deletion).
    copies: HashMap<BlobId, Vec<(u32, PackBlob)>>,
    /// Packs a prune marked for deletion (by position).
    doomed: HashSet<u32>,
}

impl Index {
    /// Adds every pack of an index object. A blob stored twice (two writers
    /// raced) keeps its first location; both are valid.
    pub fn add(&mut self, file: IndexFile) {
        for pack in file.packs {
            self.add_pack(pack);
        }
    }

    /// Adds one pack.
    pub fn add_pack(&mut self, pack: IndexedPack) {
        let pos = match self.pack_pos.get(&pack.id) {
            Some(&p) => p,
            None => {
                let p = self.packs.len() as u32;
                let kind = pack.blobs.first().map_or(BlobKind::Data, |b| b.kind);
                self.packs.push(PackInfo { id: pack.id, seal: pack.seal, size: pack.size, kind });
                self.pack_pos.insert(pack.id, p);
                p
            }
        };
        for blob in pack.blobs {
            match self.blobs.entry(blob.id) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    self.copies.entry(blob.id).or_default().push((pos, blob))
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((pos, blob));
                }
            }
        }
    }

    /// Where `id` is stored.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation<'_>> {
        self.blobs.get(id).map(|(p, blob)| BlobLocation { pack: &self.packs[*p as usize], blob })
    }

    /// Whether the pack is indexed.
    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// Whether a pack not marked for deletion holds `id`: whether a new
    /// snapshot may refer to it without storing it again. (Reading goes by
    /// [`Index::get`], which finds marked packs too.)
    pub fn contains(&self, id: &BlobId) -> bool {
        self.live_pack(id).is_some()
    }

    /// The pack not marked for deletion that holds `id`: the one a new
    /// snapshot leans on.
    pub fn live_pack(&self, id: &BlobId) -> Option<PackId> {
        self.blobs.get(id).filter(|(p, _)| !self.doomed.contains(p)).map(|(p, _)| self.packs[*p as usize].id)
    }

    /// Takes these packs as marked for deletion: a blob with a copy in a
    /// pack that is not is found there from now on (so a prune keeps that
    /// copy and lets the marked pack go).
    pub fn doom(&mut self, packs: impl IntoIterator<Item = PackId>) {
        let positions: Vec<u32> = packs.into_iter().filter_map(|id| self.pack_pos.get(&id).copied()).collect();
        self.doomed.extend(positions);
        let doomed = &self.doomed;
        for (id, copies) in &mut self.copies {
            if let Some(primary) = self.blobs.get_mut(id)
                && doomed.contains(&primary.0)
                && let Some(live) = copies.iter_mut().find(|(p, _)| !doomed.contains(p))
            {
                std::mem::swap(primary, live);
            }
        }
    }

    /// Whether a prune marked this pack for deletion.
    pub fn is_doomed(&self, pack: &PackId) -> bool {
        self.pack_pos.get(pack).is_some_and(|p| self.doomed.contains(p))
    }

    /// Every indexed pack.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// Number of indexed blobs.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Every (blob, pack) pair the index holds.
    pub fn blobs(&self) -> impl Iterator<Item = BlobLocation<'_>> {
        self.blobs.values().map(|(p, blob)| BlobLocation { pack: &self.packs[*p as usize], blob })
    }
}

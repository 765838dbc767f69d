//! Trees: one directory's listing, stored as a blob so an unchanged
//! directory is stored once across all snapshots.
//!
//! Stored form: the nodes, then (only when some node has any) an extension
//! holding the nodes' extended attributes. A tree without them is stored
//! exactly as before the extension existed, so it deduplicates with trees
//! written then, and a reader that predates the extension ignores it.

use serde::{Deserialize, Serialize};

use crate::repo::error::RepoError;
use crate::repo::format::id::BlobId;

/// File-system metadata kept for every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files), target length (symlinks).
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Access time, nanoseconds since the epoch.
    pub atime_ns: i64,
    /// Status-change time, nanoseconds since the epoch (change detection only).
    pub ctime_ns: i64,
    /// Inode number (change detection and hard links).
    pub inode: u64,
    /// Device number (hard links).
    pub dev: u64,
    /// Link count.
    pub nlink: u64,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file and its chunks, in order.
    File {
        /// Content chunks.
        content: Vec<BlobId>,
    },
    /// A directory and the tree of its entries.
    Dir {
        /// The subtree.
        subtree: BlobId,
    },
    /// A symbolic link.
    Symlink {
        /// Target, raw bytes.
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A character or block device.
    Device {
        /// Device number.
        rdev: u64,
        /// True for a block device.
        block: bool,
    },
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name, raw bytes (names need not be UTF-8).
    pub name: Vec<u8>,
    /// Kind and content.
    pub kind: NodeKind,
    /// Metadata.
    pub meta: Metadata,
    /// Extended attributes (POSIX ACLs among them), by name; stored in the
    /// tree's extension.
    #[serde(skip)]
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Its name (`user.…`, `security.…`, `system.posix_acl_access`, …).
    pub name: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// What a tree holds beyond its nodes: per node (by position) its
/// extended attributes.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Extension {
    xattrs: Vec<(u32, Vec<Xattr>)>,
}

impl Node {
    /// The name for display.
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// A directory listing, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The stored form.
    pub fn encode(&self) -> Result<Vec<u8>, RepoError> {
        let err = |e: postcard::Error| RepoError::Encode { what: "tree", reason: e.to_string() };
        let mut out = postcard::to_allocvec(self).map_err(err)?;
        let xattrs: Vec<(u32, Vec<Xattr>)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.xattrs.is_empty())
            .map(|(i, n)| (i as u32, n.xattrs.clone()))
            .collect();
        if !xattrs.is_empty() {
            out.extend(postcard::to_allocvec(&Extension { xattrs }).map_err(err)?);
        }
        Ok(out)
    }

    /// Parses a stored tree; `id` names it in errors. Names are checked to
    /// be single path components, sorted and unique, so a forged tree cannot
    /// make a restore write outside its target.
    pub fn decode(id: &BlobId, bytes: &[u8]) -> Result<Self, RepoError> {
        let what = || format!("tree {}", id.short());
        let (mut tree, rest): (Tree, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| RepoError::corrupt(what(), e))?;
        if !rest.is_empty() {
            let ext: Extension =
                postcard::from_bytes(rest).map_err(|e| RepoError::corrupt(what(), format!("extension: {e}")))?;
            for (i, xattrs) in ext.xattrs {
                let node = tree
                    .nodes
                    .get_mut(i as usize)
                    .ok_or_else(|| RepoError::corrupt(what(), "extension names a node the tree lacks"))?;
                node.xattrs = xattrs;
            }
        }
        for node in &tree.nodes {
            let n = node.name.as_slice();
            if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
                return Err(RepoError::corrupt(
                    what(),
                    format!("entry name {:?} is not a file name", node.display_name()),
                ));
            }
        }
        if tree.nodes.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(RepoError::corrupt(what(), "entries are not sorted and unique"));
        }
        Ok(tree)
    }

    /// The entry called `name`.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8]) -> Node {
        Node { name: name.to_vec(), kind: NodeKind::Fifo, meta: Metadata::default(), xattrs: Vec::new() }
    }

    #[test]
    fn extended_attributes_ride_in_an_extension_older_trees_lack() {
        let id = BlobId([0; 32]);
        let plain = Tree { nodes: vec![node(b"a"), node(b"b")] };
        let mut rich = plain.clone();
        rich.nodes[1].xattrs = vec![Xattr { name: b"user.origin".to_vec(), value: b"camera".to_vec() }];
        let (plain_bytes, rich_bytes) = (plain.encode().unwrap(), rich.encode().unwrap());
        // Without attributes: the same bytes as before the extension existed.
        #[derive(Serialize)]
        struct Old<'a> {
            nodes: Vec<(&'a [u8], &'a NodeKind, &'a Metadata)>,
        }
        let old = Old { nodes: plain.nodes.iter().map(|n| (&n.name[..], &n.kind, &n.meta)).collect() };
        assert_eq!(plain_bytes, postcard::to_allocvec(&old).unwrap());
        assert_eq!(Tree::decode(&id, &plain_bytes).unwrap(), plain);
        assert_eq!(Tree::decode(&id, &rich_bytes).unwrap(), rich);
        // An extension pointing past the nodes is damage, not a panic.
        let bad = Extension { xattrs: vec![(7, Vec::new())] };
        let mut forged = plain_bytes.clone();
        forged.extend(postcard::to_allocvec(&bad).unwrap());
        assert!(Tree::decode(&id, &forged).is_err());
    }

    #[test]
    fn names_that_escape_are_refused() {
        let id = BlobId([0; 32]);
        let ok = Tree { nodes: vec![node(b"a"), node(b"b")] };
        assert_eq!(Tree::decode(&id, &ok.encode().unwrap()).unwrap(), ok);
        for bad in [&b".."[..], b".", b"", b"a/b", b"nul\0"] {
            let t = Tree { nodes: vec![node(bad)] };
            assert!(Tree::decode(&id, &t.encode().unwrap()).is_err(), "{bad:?} accepted");
        }
        let unsorted = Tree { nodes: vec![node(b"b"), node(b"a")] };
        assert!(Tree::decode(&id, &unsorted.encode().unwrap()).is_err());
    }
}

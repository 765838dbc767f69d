//! Trees: one directory's listing, stored as a blob so an unchanged
//! directory is stored once across all snapshots.

use serde::{Deserialize, Serialize};

use super::error::RepoError;
use super::id::BlobId;

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
        postcard::to_allocvec(self).map_err(|e| RepoError::Encode { what: "tree", reason: e.to_string() })
    }

    /// Parses a stored tree; `id` names it in errors. Names are checked to
    /// be single path components, sorted and unique, so a forged tree cannot
    /// make a restore write outside its target.
    pub fn decode(id: &BlobId, bytes: &[u8]) -> Result<Self, RepoError> {
        let what = || format!("tree {}", id.short());
        let tree: Tree = postcard::from_bytes(bytes).map_err(|e| RepoError::corrupt(what(), e))?;
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
        Node { name: name.to_vec(), kind: NodeKind::Fifo, meta: Metadata::default() }
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

//! Property tests of every parser of bytes that come from storage (packs,
//! sealed objects, indexes, trees, snapshots, keyrings): arbitrary or
//! mutated input ends in an error naming the object, never a panic, and
//! what is written reads back the same.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_common::crypto::{Keyring, MasterKey, WrappedKeyring};
use lifeboat_common::repo::format::compress::compress;
use lifeboat_common::repo::format::id::BlobId;
use lifeboat_common::repo::format::index::IndexFile;
use lifeboat_common::repo::format::object;
use lifeboat_common::repo::format::pack::{BlobKind, PackBuilder, blob_id, open_blob, read_header};
use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::format::tree::{Metadata, Node, NodeKind, Tree, Xattr};
use proptest::prelude::*;

fn keyring() -> Keyring {
    Keyring::generate().unwrap()
}

/// A pack of `blobs` sealed under `ring`.
fn pack(ring: &Keyring, blobs: &[Vec<u8>]) -> Vec<u8> {
    let mut b = PackBuilder::new(ring, Vec::new()).unwrap();
    for data in blobs {
        b.add(blob_id(ring, data), BlobKind::Data, compress(data, 1), data.len()).unwrap();
    }
    b.finish().unwrap().bytes
}

/// Applies `edits` (position, xor mask) and a cut to `bytes`.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(at, mask) in edits {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn node_strategy() -> impl Strategy<Value = Node> {
    let name = proptest::collection::vec(1u8..=255, 1..24)
        .prop_filter("a file name", |n| !n.contains(&b'/') && n.as_slice() != b"." && n.as_slice() != b"..");
    let kind = prop_oneof![
        proptest::collection::vec(any::<[u8; 32]>(), 0..4)
            .prop_map(|ids| NodeKind::File { content: ids.into_iter().map(BlobId).collect() }),
        any::<[u8; 32]>().prop_map(|id| NodeKind::Dir { subtree: BlobId(id) }),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(|target| NodeKind::Symlink { target }),
        Just(NodeKind::Fifo),
        (any::<u64>(), any::<bool>()).prop_map(|(rdev, block)| NodeKind::Device { rdev, block }),
    ];
    let xattrs = proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 1..16), proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(name, value)| Xattr { name, value }),
        0..3,
    );
    (name, kind, any::<(u32, u32, u64, i64)>(), xattrs).prop_map(|(name, kind, (mode, uid, size, mtime_ns), xattrs)| {
        Node { name, kind, meta: Metadata { mode, uid, size, mtime_ns, ..Default::default() }, xattrs }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_any_parser(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let ring = keyring();
        let id = BlobId([7; 32]);
        let _ = read_header(&ring, "data/00/x", &bytes);
        let _ = object::open(&ring, "snapshot", "snapshots/x", &bytes);
        let _ = object::open_any(&ring, "index", "index/x", &bytes);
        let _ = Tree::decode(&id, &bytes);
        let _ = postcard::from_bytes::<IndexFile>(&bytes);
        let _ = serde_json::from_slice::<Snapshot>(&bytes);
        if let Ok(wrapped) = serde_json::from_slice::<WrappedKeyring>(&bytes) {
            let _ = wrapped.unwrap_with(&MasterKey::generate().unwrap());
        }
    }

    #[test]
    fn a_mutated_pack_is_refused_or_reads_back_right(
        blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3000), 1..5),
        edits in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let ring = keyring();
        let good = pack(&ring, &blobs);
        let bad = mutate(good.clone(), &edits, cut);
        match read_header(&ring, "data/00/p", &bad) {
            Err(e) => prop_assert!(e.to_string().contains("data/00/p"), "{}", e),
            Ok((seal, headers)) => {
                for (blob, want) in headers.iter().zip(&blobs) {
                    let r = blob.range();
                    let slice = bad.get(r.start as usize..r.end as usize);
                    match slice.map(|s| open_blob(&ring, &seal, blob, s, "data/00/p")) {
                        Some(Ok(data)) => prop_assert_eq!(&data, want),
                        Some(Err(e)) => prop_assert!(e.to_string().contains("data/00/p"), "{}", e),
                        None => {}
                    }
                }
            }
        }
    }

    #[test]
    fn a_mutated_sealed_object_is_refused_or_unchanged(
        payload in proptest::collection::vec(any::<u8>(), 0..4000),
        edits in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let ring = keyring();
        let sealed = object::seal(&ring, "index", "index/a", payload.clone(), 3).unwrap();
        let bad = mutate(sealed, &edits, cut);
        match object::open(&ring, "index", "index/a", &bad) {
            Ok(plain) => prop_assert_eq!(&plain, &payload),
            Err(e) => prop_assert!(e.to_string().contains("index/a"), "{}", e),
        }
        // Never under another name.
        let sealed = object::seal(&ring, "index", "index/a", payload, 3).unwrap();
        prop_assert!(object::open(&ring, "index", "index/b", &sealed).is_err());
    }

    #[test]
    fn trees_read_back_as_written_and_mutations_never_panic(
        nodes in proptest::collection::vec(node_strategy(), 0..12),
        edits in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
    ) {
        let mut nodes = nodes;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        let tree = Tree { nodes };
        let id = BlobId([1; 32]);
        let bytes = tree.encode().unwrap();
        prop_assert_eq!(Tree::decode(&id, &bytes).unwrap(), tree);
        let _ = Tree::decode(&id, &mutate(bytes, &edits, None));
    }

    #[test]
    fn a_mutated_keyring_is_refused_or_opens_the_same(
        edits in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
    ) {
        let master = MasterKey::generate().unwrap();
        let ring = keyring();
        let json = serde_json::to_vec(&ring.wrap(&master).unwrap()).unwrap();
        let bad = mutate(json, &edits, None);
        if let Ok(wrapped) = serde_json::from_slice::<WrappedKeyring>(&bad)
            && let Ok(opened) = wrapped.unwrap_with(&master)
        {
            prop_assert_eq!(opened.chunk_id_key, ring.chunk_id_key);
            prop_assert_eq!(opened.current, ring.current);
        }
    }
}

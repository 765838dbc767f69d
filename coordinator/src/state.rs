//! The control plane's state: keys and values, read freely, written in
//! conditional transactions. With etcd, those are fenced by the leader's
//! term; without etcd, one coordinator keeps the state in an embedded
//! on-disk database (redb) and is always the leader.

use std::path::Path;

use etcd_client::{Compare, CompareOp, TxnOp};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::election::{ElectionError, Leadership, retry_unsent};

/// Values by key, each with the revision it was last written at.
const VALUES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("values");
/// The last revision handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// What went wrong with the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// etcd, or the leadership the write needs.
    #[error(transparent)]
    Election(#[from] ElectionError),
    /// The embedded database.
    #[error("state database {path}: {cause}")]
    Embedded {
        /// Its file.
        path: String,
        /// What failed.
        cause: Box<redb::Error>,
    },
    /// A record changed since it was read: nothing was written.
    #[error("{0} changed meanwhile; nothing was written")]
    Conflict(String),
    /// A record could not be serialised, so nothing was written.
    #[error("encoding {what}: {cause}")]
    Encode {
        /// The kind of record.
        what: &'static str,
        /// The serialiser's error.
        cause: serde_json::Error,
    },
}

/// A record as stored: JSON, or an error rather than empty bytes.
pub fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(value).map_err(|cause| StateError::Encode { what, cause })
}

/// A value and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Its revision: any later write of the key changes it.
    pub revision: i64,
}

/// One change of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a key.
    Put(String, Vec<u8>),
    /// Removes a key (absent already: nothing).
    Delete(String),
}

/// What a conditional write checks first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key does not exist.
    Absent(String),
    /// The key was last written at this revision.
    Revision(String, i64),
}

/// The embedded store: one file, one writer.
#[derive(Debug)]
pub struct EmbeddedState {
    db: Database,
    path: String,
}

impl EmbeddedState {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let name = path.display().to_string();
        let db = Database::create(path)
            .map_err(|e| StateError::Embedded { path: name.clone(), cause: Box::new(e.into()) })?;
        Ok(EmbeddedState { db, path: name })
    }

    fn fail(&self) -> impl Fn(redb::Error) -> StateError + '_ {
        |cause| StateError::Embedded { path: self.path.clone(), cause: Box::new(cause) }
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let fail = self.fail();
        let txn = self.db.begin_read().map_err(|e| fail(e.into()))?;
        let table = match txn.open_table(VALUES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(fail(e.into())),
        };
        let found = table.get(key).map_err(|e| fail(e.into()))?;
        Ok(found.map(|v| {
            let (revision, value) = v.value();
            Versioned { value: value.to_vec(), revision: i64::try_from(revision).unwrap_or(i64::MAX) }
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StateError> {
        let fail = self.fail();
        let txn = self.db.begin_read().map_err(|e| fail(e.into()))?;
        let table = match txn.open_table(VALUES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(fail(e.into())),
        };
        let mut found = Vec::new();
        for row in table.range(prefix..).map_err(|e| fail(e.into()))? {
            let (key, value) = row.map_err(|e| fail(e.into()))?;
            if !key.value().starts_with(prefix) {
                break;
            }
            let (revision, value) = value.value();
            let revision = i64::try_from(revision).unwrap_or(i64::MAX);
            found.push((key.value().to_owned(), Versioned { value: value.to_vec(), revision }));
        }
        Ok(found)
    }

    fn commit_if(&self, conditions: &[Condition], ops: &[Op]) -> Result<Option<i64>, StateError> {
        let fail = self.fail();
        let txn = self.db.begin_write().map_err(|e| fail(e.into()))?;
        let revision = {
            let mut values = txn.open_table(VALUES).map_err(|e| fail(e.into()))?;
            for condition in conditions {
                let holds = match condition {
                    Condition::Absent(k) => values.get(k.as_str()).map_err(|e| fail(e.into()))?.is_none(),
                    Condition::Revision(k, rev) => values
                        .get(k.as_str())
                        .map_err(|e| fail(e.into()))?
                        .is_some_and(|v| i64::try_from(v.value().0).ok() == Some(*rev)),
                };
                if !holds {
                    return Ok(None);
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
            let revision = meta.get("revision").map_err(|e| fail(e.into()))?.map_or(0, |v| v.value()) + 1;
            meta.insert("revision", revision).map_err(|e| fail(e.into()))?;
            for op in ops {
                match op {
                    Op::Put(k, v) => values.insert(k.as_str(), (revision, v.as_slice())).map(drop),
                    Op::Delete(k) => values.remove(k.as_str()).map(drop),
                }
                .map_err(|e| fail(e.into()))?;
            }
            revision
        };
        // Dropped without commit when a condition failed: nothing written.
        txn.commit().map_err(|e| fail(e.into()))?;
        Ok(Some(i64::try_from(revision).unwrap_or(i64::MAX)))
    }
}

/// Where the state is, for one leader (or, read only, for a follower).
#[derive(Clone, Copy)]
pub enum State<'a> {
    /// etcd, written under this leadership.
    Etcd(&'a Leadership),
    /// etcd, read only: a follower's view.
    Follower(&'a etcd_client::Client),
    /// The embedded database (its coordinator always leads).
    Embedded(&'a EmbeddedState),
}

impl std::fmt::Debug for State<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Etcd(leader) => f.debug_tuple("Etcd").field(leader).finish(),
            State::Follower(_) => f.write_str("Follower"),
            State::Embedded(db) => f.debug_tuple("Embedded").field(db).finish(),
        }
    }
}

impl State<'_> {
    /// The value of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        match self {
            State::Embedded(db) => db.get(key),
            State::Etcd(leader) => etcd_get(leader.reader(), key).await,
            State::Follower(client) => etcd_get((*client).clone(), key).await,
        }
    }

    /// Every key under `prefix`, in key order, with its value.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StateError> {
        match self {
            State::Etcd(leader) => etcd_list(leader.reader(), prefix).await,
            State::Follower(client) => etcd_list((*client).clone(), prefix).await,
            State::Embedded(db) => db.list(prefix),
        }
    }

    /// Applies every op at once if every condition holds (and, on etcd, the
    /// leadership does): the revision written at, or `None` when a condition
    /// did not hold (nothing written).
    pub async fn commit_if(&self, conditions: &[Condition], ops: &[Op]) -> Result<Option<i64>, StateError> {
        match self {
            State::Etcd(leader) => {
                let compares = conditions
                    .iter()
                    .map(|c| match c {
                        Condition::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                        Condition::Revision(k, rev) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev),
                    })
                    .collect();
                let ops = ops
                    .iter()
                    .map(|op| match op {
                        Op::Put(k, v) => TxnOp::put(k.as_str(), v.clone(), None),
                        Op::Delete(k) => TxnOp::delete(k.as_str(), None),
                    })
                    .collect();
                Ok(leader.fenced_if(compares, ops).await?)
            }
            State::Follower(_) => Err(ElectionError::NotLeader { term: 0 }.into()),
            State::Embedded(db) => db.commit_if(conditions, ops),
        }
    }
}

async fn etcd_get(client: etcd_client::Client, key: &str) -> Result<Option<Versioned>, StateError> {
    let resp = retry_unsent(|| {
        let mut c = client.clone();
        async move { c.get(key, None).await }
    })
    .await
    .map_err(ElectionError::on_leader_connection)?;
    Ok(resp.kvs().first().map(|kv| Versioned { value: kv.value().to_vec(), revision: kv.mod_revision() }))
}

async fn etcd_list(client: etcd_client::Client, prefix: &str) -> Result<Vec<(String, Versioned)>, StateError> {
    // In pages, all at the first page's revision: one answer for thousands
    // of agents' records would pass gRPC's 4 MiB message limit.
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut listed = Vec::new();
    loop {
        let mut options = etcd_client::GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = retry_unsent(|| {
            let (mut c, options, from) = (client.clone(), options.clone(), from.clone());
            async move { c.get(from, Some(options)).await }
        })
        .await
        .map_err(ElectionError::on_leader_connection)?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            listed.push((key, Versioned { value: kv.value().to_vec(), revision: kv.mod_revision() }));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                // The next key after it.
                from.push(0);
            }
            _ => return Ok(listed),
        }
    }
}

/// Records per page of a listing.
const LIST_PAGE: i64 = 500;

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key (etcd's "\0" end).
    vec![0]
}

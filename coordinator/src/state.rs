//! The control plane's state: keys and values, read freely, written in
//! conditional transactions. With etcd, those are fenced by the leader's
//! term; without etcd, one coordinator keeps the state in an embedded
//! on-disk database (redb) and is always the leader.

use std::path::Path;

use etcd_client::{Compare, CompareOp, TxnOp};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::election::{ElectionError, Leadership};

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
}

/// A value and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Its revision: any later write of the key changes it.
    pub revision: i64,
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

    fn commit_if(&self, conditions: &[Condition], puts: &[(String, Vec<u8>)]) -> Result<bool, StateError> {
        let fail = self.fail();
        let txn = self.db.begin_write().map_err(|e| fail(e.into()))?;
        {
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
                    return Ok(false);
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
            let revision = meta.get("revision").map_err(|e| fail(e.into()))?.map_or(0, |v| v.value()) + 1;
            meta.insert("revision", revision).map_err(|e| fail(e.into()))?;
            for (k, v) in puts {
                values.insert(k.as_str(), (revision, v.as_slice())).map_err(|e| fail(e.into()))?;
            }
        }
        // Dropped without commit when a condition failed: nothing written.
        txn.commit().map_err(|e| fail(e.into()))?;
        Ok(true)
    }
}

/// Where the state is, for one leader.
#[derive(Debug, Clone, Copy)]
pub enum State<'a> {
    /// etcd, written under this leadership.
    Etcd(&'a Leadership),
    /// The embedded database (its coordinator always leads).
    Embedded(&'a EmbeddedState),
}

impl State<'_> {
    /// The value of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        match self {
            State::Etcd(leader) => {
                let resp = leader.reader().get(key, None).await.map_err(ElectionError::on_leader_connection)?;
                Ok(resp.kvs().first().map(|kv| Versioned { value: kv.value().to_vec(), revision: kv.mod_revision() }))
            }
            State::Embedded(db) => db.get(key),
        }
    }

    /// Writes every `puts` at once if every condition holds (and, on etcd,
    /// the leadership does); `Ok(false)` when a condition did not.
    pub async fn commit_if(&self, conditions: &[Condition], puts: &[(String, Vec<u8>)]) -> Result<bool, StateError> {
        match self {
            State::Etcd(leader) => {
                let compares = conditions
                    .iter()
                    .map(|c| match c {
                        Condition::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                        Condition::Revision(k, rev) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev),
                    })
                    .collect();
                let ops = puts.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None)).collect();
                Ok(leader.fenced_if(compares, ops).await?)
            }
            State::Embedded(db) => db.commit_if(conditions, puts),
        }
    }
}

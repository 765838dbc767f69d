//! Leader election through etcd, with fencing.
//!
//! The leader owns `<prefix>/leader`, created if absent under a lease the
//! leader keeps alive (TTL a few seconds). The key's create revision is the
//! leader's term. Every state change the leader makes is a transaction that
//! also checks the key still has that create revision: a leader that lost
//! its lease (paused, partitioned) while another took over commits nothing,
//! whatever it believes.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often an etcd connection is pinged: etcd answers pings more frequent
/// than its `--grpc-keepalive-min-time` (5 s by default) by closing the
/// connection (`too_many_pings`).
const PING_EVERY: Duration = Duration::from_secs(5);

/// How soon a failed lease renewal is tried again.
const RETRY_SOON: Duration = Duration::from_millis(100);

/// What can go wrong electing or acting as leader.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// etcd could not be reached or refused.
    #[error("etcd at {endpoints}: {cause}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// The client's error.
        cause: etcd_client::Error,
    },
    /// This coordinator is not (or no longer) the leader: nothing was written.
    #[error("not the leader (term {term} is over): nothing was written")]
    NotLeader {
        /// The term that ended.
        term: i64,
    },
    /// The leader record could not be serialised: no campaign was made.
    #[error("encoding the leader record: {0}")]
    Encode(serde_json::Error),
}

/// How to take part in the election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Every key of this deployment is under it (e.g. `/lifeboat/eu-west`).
    pub prefix: String,
    /// This coordinator's name.
    pub name: String,
    /// Where agents and clients reach it.
    pub url: String,
    /// Lease TTL: how long a silent leader stays leader.
    pub ttl: Duration,
}

/// Who leads, as stored in the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's name.
    pub name: String,
    /// Where to reach it.
    pub url: String,
    /// Its term (the key's create revision).
    #[serde(skip)]
    pub term: i64,
}

/// A member of the election.
#[derive(Clone)]
pub struct Elector {
    client: Client,
    config: ElectionConfig,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Elector {
    /// Connects to etcd.
    pub async fn connect(config: ElectionConfig) -> Result<Self, ElectionError> {
        // Requests time out well inside the TTL, so a stalled etcd is noticed
        // while the lease can still be kept. HTTP/2 pings drop a connection
        // to a member cut off by a partition (no reset ever comes), which
        // the client would otherwise keep sending a share of its requests
        // to; a member without a raft leader (the minority side) refuses at
        // once instead of letting requests wait.
        let timeout = (config.ttl / 3).max(Duration::from_millis(500));
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(PING_EVERY, timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = Client::connect(&config.endpoints, Some(options)).await.map_err(|cause| etcd(&config, cause))?;
        Ok(Elector { client, config })
    }

    /// A client for reads (a follower's view of the state).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.config.prefix)
    }

    /// The current leader, if there is one.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, ElectionError> {
        let key = self.leader_key();
        let resp = retry_unsent(|| {
            let (mut c, key) = (self.client.clone(), key.clone());
            async move { c.get(key, None).await }
        })
        .await
        .map_err(|e| etcd(&self.config, e))?;
        Ok(resp.kvs().first().and_then(|kv| {
            let mut info: LeaderInfo = serde_json::from_slice(kv.value()).ok()?;
            info.term = kv.create_revision();
            Some(info)
        }))
    }

    /// Tries once to become leader: `None` if another coordinator leads.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, ElectionError> {
        let mut client = self.client.clone();
        let ttl = i64::try_from(self.config.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = retry_unsent(|| {
            let mut c = client.clone();
            async move { c.lease_grant(ttl, None).await }
        })
        .await
        .map_err(|e| etcd(&self.config, e))?
        .id();
        let key = self.leader_key();
        let value =
            serde_json::to_vec(&LeaderInfo { name: self.config.name.clone(), url: self.config.url.clone(), term: 0 })
                .map_err(ElectionError::Encode)?;
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let resp = retry_unsent(|| {
            let (mut c, txn) = (client.clone(), txn.clone());
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| etcd(&self.config, e))?;
        if !resp.succeeded() {
            client.lease_revoke(lease).await.ok();
            return Ok(None);
        }
        // The transaction's revision is the key's create revision.
        let term = resp.header().map_or(0, |h| h.revision());
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(client.clone(), lease, self.config.ttl, lost_tx));
        tracing::info!(name = %self.config.name, term, "became leader");
        Ok(Some(Leadership { client, key, term, lease, lost, keeper }))
    }

    /// Waits until this coordinator leads, trying every third of the TTL,
    /// through etcd being unreachable or without quorum meanwhile.
    pub async fn campaign(&self) -> Leadership {
        loop {
            match self.try_lead().await {
                Ok(Some(l)) => return l,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot campaign for leadership; retrying"),
            }
            tokio::time::sleep(self.config.ttl / 3).await;
        }
    }
}

/// How many more times a request goes out when it was not sent at all.
const UNSENT_RETRIES: usize = 4;

/// Whether a request failed before it reached any member (its member could
/// not be connected to), so sending it again cannot apply it twice.
fn unsent(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::Unavailable && s.message().contains("connect"))
}

/// Runs `request` again when it was not sent: the client balances over the
/// members and may pick a dead one while the others answer (a member down
/// must not stop a leader that still has quorum).
pub(crate) async fn retry_unsent<T, F, Fut>(mut request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut tries = 0;
    loop {
        match request().await {
            Err(e) if unsent(&e) && tries < UNSENT_RETRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            done => return done,
        }
    }
}

impl ElectionError {
    /// A failure on the leader's own etcd connection.
    pub(crate) fn on_leader_connection(cause: etcd_client::Error) -> Self {
        ElectionError::Etcd { endpoints: "the leader's etcd connection".into(), cause }
    }
}

fn etcd(config: &ElectionConfig, cause: etcd_client::Error) -> ElectionError {
    ElectionError::Etcd { endpoints: config.endpoints.join(","), cause }
}

/// Keeps the lease alive every third of the TTL; reports the loss when
/// etcd says the lease is gone, or when a whole TTL passed without a
/// renewal (etcd unreachable: the lease has expired there by then).
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let mut last_renewed = tokio::time::Instant::now();
    let mut channel = None;
    let mut failed = false;
    loop {
        // After a failure, again at once: the client's next attempt may go
        // to another member (a stream sticks to the member it opened on).
        tokio::time::sleep(if failed { RETRY_SOON } else { ttl / 3 }).await;
        if channel.is_none() {
            channel = client.lease_keep_alive(lease).await.ok();
        }
        let alive = match channel.as_mut() {
            Some((keeper, stream)) => {
                let renewal = async {
                    keeper.keep_alive().await.ok()?;
                    stream.message().await.ok()?.map(|r| r.ttl() > 0)
                };
                tokio::time::timeout(ttl / 3, renewal).await.ok().flatten()
            }
            None => None,
        };
        failed = alive.is_none();
        match alive {
            Some(true) => last_renewed = tokio::time::Instant::now(),
            Some(false) => break,
            None => {
                // A broken stream is opened afresh on the next round.
                channel = None;
                if last_renewed.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
    lost.send_replace(true);
}

/// Being the leader, for one term.
pub struct Leadership {
    client: Client,
    key: String,
    term: i64,
    lease: i64,
    lost: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("key", &self.key).field("term", &self.term).finish_non_exhaustive()
    }
}

impl Leadership {
    /// The term.
    pub fn term(&self) -> i64 {
        self.term
    }

    /// Whether the lease is known lost (a fenced write may fail before this
    /// says so: fencing, not this, is what keeps a deposed leader harmless).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Completes when the lease is lost.
    pub async fn lost(&mut self) {
        while !*self.lost.borrow_and_update() {
            if self.lost.changed().await.is_err() {
                return;
            }
        }
    }

    /// Writes `key = value` only if this term still holds the leadership.
    pub async fn fenced_put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), ElectionError> {
        self.fenced(vec![TxnOp::put(key, value, None)]).await
    }

    /// Applies `ops` atomically, only if this term still holds the leadership.
    pub async fn fenced(&self, ops: Vec<TxnOp>) -> Result<(), ElectionError> {
        match self.fenced_if(Vec::new(), ops).await? {
            Some(_) => Ok(()),
            None => Err(ElectionError::NotLeader { term: self.term }),
        }
    }

    /// Applies `ops` atomically if this term still holds the leadership and
    /// `compares` hold: the revision written at, `Ok(None)` when a compare
    /// did not hold (nothing written), [`ElectionError::NotLeader`] when the
    /// term is over.
    pub async fn fenced_if(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<Option<i64>, ElectionError> {
        let inner = Txn::new().when(compares).and_then(ops);
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, self.term)])
            .and_then([TxnOp::txn(inner)]);
        let resp = retry_unsent(|| {
            let (mut c, txn) = (self.client.clone(), txn.clone());
            async move { c.txn(txn).await }
        })
        .await
        .map_err(ElectionError::on_leader_connection)?;
        if !resp.succeeded() {
            return Err(ElectionError::NotLeader { term: self.term });
        }
        let applied =
            resp.op_responses().into_iter().any(|r| matches!(r, etcd_client::TxnOpResponse::Txn(t) if t.succeeded()));
        Ok(applied.then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// A client for reads (any member answers; reads need no fencing).
    pub fn reader(&self) -> Client {
        self.client.clone()
    }

    /// Steps down at once (the lease is revoked, so a successor need not
    /// wait for the TTL).
    pub async fn resign(mut self) {
        self.keeper.abort();
        self.client.lease_revoke(self.lease).await.ok();
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

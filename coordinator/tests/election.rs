//! Leader election against a real 3-member etcd cluster: a paused leader
//! (its process frozen, as SIGSTOP would) is replaced within two lease TTLs
//! and, once it runs again, commits nothing.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use lifeboat_coordinator::election::{ElectionConfig, ElectionError, Elector};
use lifeboat_integration_tests::etcd::EtcdCluster;

const TTL: Duration = Duration::from_secs(2);

fn config(cluster: &EtcdCluster, name: &str) -> ElectionConfig {
    ElectionConfig {
        endpoints: cluster.endpoints(),
        prefix: "/lifeboat/test".into(),
        name: name.into(),
        url: format!("https://{name}.invalid:7443"),
        ttl: TTL,
    }
}

/// What the test asks of a coordinator running on a thread of its own.
enum Ask {
    Put(String, String, mpsc::Sender<Result<(), String>>),
    /// Block the thread, runtime and all, like SIGSTOP.
    Freeze(Duration),
    IsLost(mpsc::Sender<bool>),
}

/// A leader on its own thread and runtime, which the test can freeze.
fn leader_thread(config: ElectionConfig) -> (mpsc::Sender<Ask>, i64) {
    let (tx, rx) = mpsc::channel::<Ask>();
    let (term_tx, term_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let elector = Elector::connect(config).await.unwrap();
            let leadership = elector.try_lead().await.unwrap().expect("the first candidate leads");
            term_tx.send(leadership.term()).unwrap();
            loop {
                // Poll for asks without blocking the runtime (the lease is
                // kept alive meanwhile), except when told to freeze.
                match rx.try_recv() {
                    Ok(Ask::Put(k, v, reply)) => {
                        let _ = reply.send(leadership.fenced_put(&k, v).await.map_err(|e| e.to_string()));
                    }
                    Ok(Ask::Freeze(d)) => std::thread::sleep(d),
                    Ok(Ask::IsLost(reply)) => {
                        let _ = reply.send(leadership.is_lost());
                    }
                    Err(mpsc::TryRecvError::Empty) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
        });
    });
    (tx, term_rx.recv().unwrap())
}

fn put(a: &mpsc::Sender<Ask>, k: &str, v: &str) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    a.send(Ask::Put(k.into(), v.into(), tx)).unwrap();
    rx.recv().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_leader_is_replaced_within_two_ttls_and_then_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 3);
    let (a, a_term) = leader_thread(config(&cluster, "a"));
    put(&a, "/lifeboat/test/state/x", "a1").unwrap();

    let b = Elector::connect(config(&cluster, "b")).await.unwrap();
    assert!(b.try_lead().await.unwrap().is_none(), "two leaders at once");
    let led = b.leader().await.unwrap().unwrap();
    assert_eq!((led.name.as_str(), led.term), ("a", a_term));

    a.send(Ask::Freeze(TTL * 3)).unwrap();
    let frozen = Instant::now();
    let lead_b = tokio::time::timeout(TTL * 3, b.campaign()).await.expect("no new leader");
    let took = frozen.elapsed();
    eprintln!("new leader after {took:?} (TTL {TTL:?})");
    assert!(took < TTL * 2, "a new leader took {took:?}, over twice the TTL");
    assert!(lead_b.term() > a_term);
    lead_b.fenced_put("/lifeboat/test/state/x", "b1").await.unwrap();

    // Thawed, the old leader still thinks it leads for a moment: its
    // writes are fenced off all the same.
    let err = put(&a, "/lifeboat/test/state/x", "a2").unwrap_err();
    assert!(err.contains("not the leader"), "{err}");
    let mut check = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let value = check.get("/lifeboat/test/state/x", None).await.unwrap();
    assert_eq!(value.kvs()[0].value(), b"b1");
    let deadline = Instant::now() + TTL * 2;
    loop {
        let (tx, rx) = mpsc::channel();
        a.send(Ask::IsLost(tx)).unwrap();
        if rx.recv().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "the old leader never noticed it lost the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lead_b.fenced_put("/lifeboat/test/state/y", "b2").await.unwrap();
    lead_b.resign().await;
    // Resigned: the next candidate leads at once, not after a TTL.
    let c = Elector::connect(config(&cluster, "c")).await.unwrap();
    assert!(c.try_lead().await.unwrap().is_some());
}

/// A fenced write, retried for a couple of seconds while the client
/// notices which members are down or back.
async fn put_soon(lead: &lifeboat_coordinator::election::Leadership, key: &str, value: &str) -> bool {
    for _ in 0..10 {
        if lead.fenced_put(key, value).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn one_member_down_changes_nothing_and_without_quorum_nothing_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 3);
    let a = Elector::connect(config(&cluster, "a")).await.unwrap();
    let mut lead = a.try_lead().await.unwrap().unwrap();

    cluster.kill(2);
    assert!(put_soon(&lead, "/lifeboat/test/state/x", "one down").await, "writes failed with one member of three down");
    tokio::time::sleep(TTL * 2).await;
    assert!(!lead.is_lost(), "the lease lapsed with one member of three down");

    // Quorum lost: writes fail, and the leader learns it lost its lease.
    // (A write the old raft leader took in before it noticed may still
    // commit once quorum returns, in order, while this term still held:
    // that is not two leaders.)
    cluster.kill(1);
    assert!(lead.fenced_put("/lifeboat/test/state/x", "no quorum").await.is_err());
    tokio::time::timeout(TTL * 3, lead.lost()).await.expect("the leader never noticed quorum was lost");

    // Quorum back: a new term, and the old one commits nothing more.
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_healthy(Duration::from_secs(30));
    let new = tokio::time::timeout(TTL * 5, a.campaign()).await.expect("no leader after quorum returned");
    assert!(new.term() > lead.term());
    assert!(put_soon(&new, "/lifeboat/test/state/y", "back").await, "the new term cannot write");
    for _ in 0..3 {
        match lead.fenced_put("/lifeboat/test/state/y", "old term").await {
            Err(ElectionError::NotLeader { .. }) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(()) => panic!("the old term wrote after a new one began"),
        }
    }
    let mut check = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let value = check.get("/lifeboat/test/state/y", None).await.unwrap();
    assert_eq!(value.kvs()[0].value(), b"back");
}

#[test]
fn a_listing_larger_than_one_grpc_message_comes_back_whole_in_pages() {
    use lifeboat_coordinator::state::{Op, State};
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let elector = Elector::connect(config(&cluster, "c1")).await.unwrap();
        let leadership = elector.campaign().await;
        let state = State::Etcd(&leadership);
        // 1,200 records of 5 KB: 6 MB, past gRPC's 4 MiB answer limit.
        let value = vec![b'x'; 5_000];
        for batch in 0..12 {
            let ops: Vec<Op> = (0..100)
                .map(|i| Op::Put(format!("/lifeboat/test/agents/host-{:05}", batch * 100 + i), value.clone()))
                .collect();
            state.commit_if(&[], &ops).await.unwrap();
        }
        state
            .commit_if(&[], &[Op::Put("/lifeboat/test/agentz".into(), b"not under the prefix".to_vec())])
            .await
            .unwrap();
        let listed = state.list("/lifeboat/test/agents/").await.unwrap();
        assert_eq!(listed.len(), 1_200);
        assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "not in key order");
        assert_eq!(listed[1_199].0, "/lifeboat/test/agents/host-01199");
        let reader = elector.client();
        assert_eq!(State::Follower(&reader).list("/lifeboat/test/agents/").await.unwrap().len(), 1_200);
    });
}

//! A client that commits rows one at a time and records each commit the
//! server acknowledged, with when: what a failover may lose is measured
//! against it (every acknowledged id missing from the new primary is a
//! lost commit, and its time says how far back the loss reaches).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::netns;

/// One acknowledged commit.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    /// The row's id.
    pub id: i64,
    /// When the server acknowledged it.
    pub at: SystemTime,
}

/// A writer running in its own thread.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    thread: Option<JoinHandle<()>>,
}

/// The table the writer fills (created by [`Writer::start`]).
pub const TABLE: &str = "lifeboat_writes";

impl Writer {
    /// Creates the table on `127.0.0.1:port` and commits a row every
    /// `every` until stopped; failed commits (the server gone) are
    /// retried after a pause and never recorded.
    pub fn start(port: u16, every: Duration) -> Self {
        Self::start_in(None, port, every)
    }

    /// As [`Writer::start`], connecting from network namespace `ns`.
    pub fn start_in(ns: Option<&str>, port: u16, every: Duration) -> Self {
        let ns = ns.map(str::to_owned);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = &ns {
                netns::enter(ns);
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(write(port, every, stop2, acked2, ready_tx));
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("the writer connects and creates its table");
        Writer { stop, acked, thread: Some(thread) }
    }

    /// What was acknowledged so far.
    pub fn acked(&self) -> Vec<Acked> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops it; returns everything acknowledged.
    pub fn stop(mut self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        self.acked()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn connect(port: u16) -> Option<tokio_postgres::Client> {
    let config = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
    let (client, conn) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    Some(client)
}

async fn write(
    port: u16,
    every: Duration,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut client = connect(port).await;
    // Ids go on from the largest there: the table may hold an earlier writer's rows.
    let mut id: i64 = 0;
    if let Some(c) = &client {
        let create =
            format!("CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())");
        let largest = format!("SELECT coalesce(max(id), 0) FROM {TABLE}");
        if c.batch_execute(&create).await.is_ok()
            && let Ok(row) = c.query_one(&largest, &[]).await
        {
            id = row.get(0);
            ready.send(()).ok();
        }
    }
    let insert = format!("INSERT INTO {TABLE} (id) VALUES ($1)");
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let done = match &client {
            Some(c) => c.execute(insert.as_str(), &[&id]).await.is_ok(),
            None => false,
        };
        if done {
            acked.lock().unwrap_or_else(|p| p.into_inner()).push(Acked { id, at: SystemTime::now() });
            tokio::time::sleep(every).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client = connect(port).await;
        }
    }
}

/// The ids present in `TABLE` of the server on `port`.
pub fn ids_on(port: u16) -> std::collections::BTreeSet<i64> {
    ids_in(None, port)
}

/// The ids present in `TABLE` of the server on `port` in network namespace `ns`.
pub fn ids_in(ns: Option<&str>, port: u16) -> std::collections::BTreeSet<i64> {
    run_in(ns, async move {
        let client = connect(port).await.expect("connecting to read the ids");
        let rows = client.query(&format!("SELECT id FROM {TABLE}"), &[]).await.expect("reading the ids");
        rows.iter().map(|r| r.get::<_, i64>(0)).collect()
    })
}

/// Inserts row `id` into the server on `port` in namespace `ns`, trying
/// every 50 ms for up to `within`; when it was first acknowledged.
pub fn first_accepted(ns: Option<&str>, port: u16, id: i64, within: Duration) -> Option<SystemTime> {
    run_in(ns, async move {
        let deadline = tokio::time::Instant::now() + within;
        let insert = format!("INSERT INTO {TABLE} (id) VALUES ($1)");
        while tokio::time::Instant::now() < deadline {
            // A fresh connection each time: the server may have restarted.
            if let Some(c) = connect(port).await
                && c.execute(insert.as_str(), &[&id]).await.is_ok()
            {
                return Some(SystemTime::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
}

/// Runs `work` to completion on a thread of its own in namespace `ns`.
fn run_in<T: Send>(ns: Option<&str>, work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(ns) = ns {
                    netns::enter(ns);
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                rt.block_on(work)
            })
            .join()
            .expect("the database thread")
    })
}

/// Runs `sql` on the server on `port` (one that no test's `Cluster` owns).
pub fn sql_on(port: u16, sql: &str) {
    run_in(None, async move {
        let client = connect(port).await.expect("connecting");
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

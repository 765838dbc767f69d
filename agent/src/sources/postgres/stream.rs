//! WAL streaming: the agent is a physical standby of the primary, through a
//! replication slot, and stores what it receives in the repository: every
//! completed segment as the archive would, and the segment being written as
//! `<name>.stream`, replaced every few seconds (or at once, in synchronous
//! mode). It reports a position flushed only once the repository holds it,
//! so the slot keeps on the primary every byte not yet stored (nothing is
//! lost while the agent is down), and a synchronous standby entry for it
//! makes every commit wait for the repository: RPO zero.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_common::repo::Repository;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::PgError;
use super::connect::ConnectArgs;
use super::replication::{ReplicationConn, Streamed, format_lsn};
use super::wal::{self, Pushed, STREAMING_SUFFIX};

/// Completed segments waiting for upload before reading pauses (memory bound).
const MAX_QUEUED: usize = 4;
/// How often the server hears from us even when nothing was stored.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait before retrying a failed upload or a lost connection.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The physical replication slot (created if absent).
    pub slot: String,
    /// Store every received byte at once and report it flushed only then,
    /// for `synchronous_standby_names` to name this agent.
    pub synchronous: bool,
    /// How often the current partial segment is stored when not synchronous.
    pub interval: Duration,
    /// Name the server knows this standby by (`synchronous_standby_names`).
    pub application_name: String,
    /// A JSON file rewritten with the [`StreamStatus`] every second.
    pub status_file: Option<PathBuf>,
}

/// Where streaming stands: what the coordinator alerts on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    /// The slot.
    pub slot: String,
    /// Whether commits wait for the repository.
    pub synchronous: bool,
    /// Whether a replication connection is up.
    pub connected: bool,
    /// Timeline being streamed.
    pub timeline: u32,
    /// WAL received from the server.
    pub received_lsn: String,
    /// WAL stored in the repository (reported flushed to the server).
    pub stored_lsn: String,
    /// The server's end of WAL, as last heard.
    pub server_lsn: String,
    /// Bytes of WAL the server has that the repository does not.
    pub lag_bytes: u64,
    /// Seconds since the server had WAL the repository still lacks (0: caught up).
    pub lag_seconds: f64,
    /// Seconds since WAL was last stored.
    pub newest_stored_age_seconds: Option<f64>,
    /// Segments stored whole since the status was made.
    pub segments_stored: u64,
    /// Partial-segment uploads since the status was made.
    pub partial_uploads: u64,
    /// The last error, if streaming is retrying.
    pub last_error: Option<String>,
    /// When this was measured.
    pub updated_at: Option<DateTime<Utc>>,
}

/// One upload, done in order: the flushed position only ever moves forward.
enum Job {
    /// A completed segment.
    Segment { name: String, content: Vec<u8>, end: u64 },
    /// The segment being written, zero-filled to full size (as PostgreSQL
    /// needs a restored segment to be; zstd stores the zeros in a few bytes).
    Partial { name: String, content: Vec<u8>, end: u64 },
    /// A timeline history file.
    History { name: String, content: Vec<u8> },
}

impl Job {
    fn end(&self) -> Option<u64> {
        match self {
            Job::Segment { end, .. } | Job::Partial { end, .. } => Some(*end),
            Job::History { .. } => None,
        }
    }

    /// Stores it; the job is kept (its bytes copied for the upload) so a
    /// failure can be retried.
    async fn run(&self, repo: &Repository) -> Result<Option<u64>, PgError> {
        match self {
            Job::Segment { name, content, .. } => {
                let (pushed, _) = wal::push_content(repo, name, content.clone()).await?;
                if pushed == Pushed::AlreadyThere {
                    tracing::debug!(%name, "segment already archived");
                }
                repo.store().delete(&wal::wal_key(&format!("{name}{STREAMING_SUFFIX}"))?).await?;
            }
            Job::Partial { name, content, .. } => {
                let key = wal::wal_key(&format!("{name}{STREAMING_SUFFIX}"))?;
                let (sealed, _) = wal::seal(repo, &key, content.clone()).await?;
                repo.store().put(&key, sealed).await?;
            }
            Job::History { name, content } => {
                wal::push_content(repo, name, content.clone()).await?;
            }
        }
        Ok(self.end())
    }
}

/// An upload under way, handing its job back (to retry it if it failed).
type Upload = JoinHandle<(Job, Result<Option<u64>, PgError>)>;

/// The segment being received.
struct Segment {
    timeline: u32,
    start: u64,
    data: Vec<u8>,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    /// The upload of what was received so far.
    fn partial(&self, size: u64) -> Job {
        let mut content = Vec::with_capacity(size as usize);
        content.extend_from_slice(&self.data);
        content.resize(size as usize, 0);
        Job::Partial { name: wal::segment_name(self.timeline, self.start, size), content, end: self.end() }
    }
}

/// State kept across reconnections, published as [`StreamStatus`].
struct Progress {
    status: StreamStatus,
    stored: u64,
    received: u64,
    server: u64,
    last_stored_at: Option<Instant>,
    /// When the server was first heard to have WAL up to each position:
    /// the oldest entry above `stored` dates the lag.
    heard: VecDeque<(u64, Instant)>,
}

impl Progress {
    fn heard_of(&mut self, server_end: u64) {
        self.server = self.server.max(server_end);
        if self.heard.back().is_none_or(|(l, _)| *l < server_end) {
            if self.heard.len() >= 4096 {
                self.heard.pop_back();
            }
            self.heard.push_back((server_end, Instant::now()));
        }
    }

    fn stored_to(&mut self, lsn: u64) {
        self.stored = self.stored.max(lsn);
        self.last_stored_at = Some(Instant::now());
        while self.heard.front().is_some_and(|(l, _)| *l <= self.stored) {
            self.heard.pop_front();
        }
    }

    fn publish(&mut self, tx: &watch::Sender<StreamStatus>, file: Option<&PathBuf>) {
        let s = &mut self.status;
        s.received_lsn = format_lsn(self.received);
        s.stored_lsn = format_lsn(self.stored);
        s.server_lsn = format_lsn(self.server);
        s.lag_bytes = self.server.saturating_sub(self.stored);
        s.lag_seconds = self.heard.front().map_or(0.0, |(_, t)| t.elapsed().as_secs_f64());
        s.newest_stored_age_seconds = self.last_stored_at.map(|t| t.elapsed().as_secs_f64());
        s.updated_at = Some(Utc::now());
        if let Some(path) = file
            && let Ok(json) = serde_json::to_vec_pretty(s)
        {
            // Whole or not at all, for readers polling it.
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the status file");
            }
        }
        tx.send_replace(s.clone());
    }
}

/// The caller's stop signal, which completes once and then never again
/// (a finished future must not be polled).
struct Shutdown<'a, F: Future<Output = ()>> {
    future: std::pin::Pin<&'a mut F>,
    done: bool,
}

impl<F: Future<Output = ()>> Shutdown<'_, F> {
    /// Completes when the stop is asked for; pending forever after.
    async fn requested(&mut self) {
        if self.done {
            std::future::pending::<()>().await;
        }
        self.future.as_mut().await;
        self.done = true;
    }
}

/// Streams WAL into `repo` until `shutdown` completes, reconnecting after
/// failures. Fails only if the first connection cannot be made (a wrong
/// host, user or password is better reported than retried forever) or a
/// segment conflicts with the archive.
pub async fn stream_wal(
    repo: &Repository,
    connect: &ConnectArgs,
    opts: &StreamOptions,
    status: watch::Sender<StreamStatus>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PgError> {
    // The counts go on from a previous run on the same status (a restart after a failure).
    let (segments_stored, partial_uploads) = {
        let before = status.borrow();
        (before.segments_stored, before.partial_uploads)
    };
    let mut progress = Progress {
        status: StreamStatus {
            slot: opts.slot.clone(),
            synchronous: opts.synchronous,
            segments_stored,
            partial_uploads,
            ..Default::default()
        },
        stored: 0,
        received: 0,
        server: 0,
        last_stored_at: None,
        heard: VecDeque::new(),
    };
    let mut shutdown = Shutdown { future: pin!(shutdown), done: false };
    let mut ever_connected = false;
    loop {
        let outcome = session(repo, connect, opts, &mut progress, &status, &mut shutdown, &mut ever_connected).await;
        progress.status.connected = false;
        match outcome {
            Ok(()) => {
                progress.publish(&status, opts.status_file.as_ref());
                return Ok(());
            }
            Err(e) if shutdown.done => return Err(e),
            Err(e @ PgError::Conflict { .. }) => return Err(e),
            Err(e) if !ever_connected => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "WAL streaming interrupted; reconnecting");
                progress.status.last_error = Some(e.to_string());
                progress.publish(&status, opts.status_file.as_ref());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_DELAY) => {}
            () = shutdown.requested() => return Ok(()),
        }
    }
}

/// One replication connection's life. Whatever was received is stored
/// before it returns, even when the connection broke.
async fn session(
    repo: &Repository,
    connect: &ConnectArgs,
    opts: &StreamOptions,
    progress: &mut Progress,
    status: &watch::Sender<StreamStatus>,
    shutdown: &mut Shutdown<'_, impl Future<Output = ()>>,
    ever_connected: &mut bool,
) -> Result<(), PgError> {
    let mut conn = ReplicationConn::connect(connect, &opts.application_name).await?;
    let system = conn.identify_system().await?;
    let seg_size = conn.wal_segment_size().await?;
    let position = match conn.read_slot(&opts.slot).await? {
        Some(p) => p,
        None => {
            conn.create_slot(&opts.slot).await?;
            conn.read_slot(&opts.slot).await?.ok_or_else(|| {
                PgError::Replication(format!("slot {} was created but holds no WAL position", opts.slot))
            })?
        }
    };
    let mut timeline = position.restart_timeline.unwrap_or(system.timeline);
    // From the start of the segment, so each stored segment is whole; the
    // slot keeps every segment from the one holding its restart point.
    let mut seg = Segment { timeline, start: position.restart_lsn - position.restart_lsn % seg_size, data: Vec::new() };
    conn.start(&opts.slot, timeline, seg.start).await?;
    *ever_connected = true;
    progress.stored = progress.stored.max(position.restart_lsn);
    progress.received = progress.received.max(position.restart_lsn);
    progress.status.connected = true;
    progress.status.timeline = timeline;
    progress.status.last_error = None;
    tracing::info!(slot = %opts.slot, timeline, start = %format_lsn(seg.start), "streaming WAL");
    progress.publish(status, opts.status_file.as_ref());

    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut inflight: Option<Upload> = None;
    let mut last_partial = Instant::now();
    let mut retry_at: Option<Instant> = None;
    let mut last_status_sent = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Set when reading stops: shutting down, or the connection broke.
    let mut ending: Option<Result<(), PgError>> = None;

    loop {
        let now = Instant::now();
        let pending = seg.end() > progress.stored;
        if inflight.is_none() && retry_at.is_none_or(|t| now >= t) {
            let partial_due = pending && (ending.is_some() || opts.synchronous || now >= last_partial + opts.interval);
            let job = queue.pop_front().or_else(|| partial_due.then(|| seg.partial(seg_size)));
            if let Some(job) = job {
                if matches!(job, Job::Partial { .. }) {
                    last_partial = now;
                }
                let repo = repo.clone();
                inflight = Some(tokio::spawn(async move {
                    let outcome = job.run(&repo).await;
                    (job, outcome)
                }));
            }
        }
        if inflight.is_none()
            && queue.is_empty()
            && let Some(end) = ending.take()
        {
            if end.is_ok() {
                conn.send_status(progress.stored).await.ok();
            }
            return end;
        }
        let wake_at = if inflight.is_none() && pending && !opts.synchronous {
            last_partial + opts.interval
        } else {
            now + STATUS_INTERVAL
        };
        let wake_at = retry_at.map_or(wake_at, |r| r.min(wake_at));

        tokio::select! {
            msg = conn.next(), if ending.is_none() && queue.len() < MAX_QUEUED => match msg {
                Ok(Streamed::XLogData { start, server_end, data }) => {
                    if start != seg.end() {
                        ending = Some(Err(PgError::Replication(format!(
                            "the server sent WAL from {} where {} was expected", format_lsn(start), format_lsn(seg.end())
                        ))));
                        continue;
                    }
                    let mut rest = &data[..];
                    while !rest.is_empty() {
                        let room = (seg_size as usize) - seg.data.len();
                        let take = room.min(rest.len());
                        seg.data.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                        if seg.data.len() as u64 == seg_size {
                            let next = Segment { timeline, start: seg.start + seg_size, data: Vec::new() };
                            let done = std::mem::replace(&mut seg, next);
                            let name = wal::segment_name(done.timeline, done.start, seg_size);
                            queue.push_back(Job::Segment { name, end: done.end(), content: done.data });
                        }
                    }
                    progress.received = progress.received.max(seg.end());
                    progress.heard_of(server_end.max(seg.end()));
                }
                Ok(Streamed::Keepalive { server_end, reply }) => {
                    progress.heard_of(server_end);
                    if reply && let Err(e) = conn.send_status(progress.stored).await {
                        ending = Some(Err(e));
                    }
                    last_status_sent = Instant::now();
                }
                Ok(Streamed::TimelineEnd { next_timeline }) => {
                    let Some((next, switch)) = next_timeline else {
                        ending = Some(Err(PgError::Replication("the server ended the stream".into())));
                        continue;
                    };
                    // The old timeline's last segment stays partial (a
                    // promoted server archives its own copy as `.partial`).
                    if !seg.data.is_empty() {
                        queue.push_back(seg.partial(seg_size));
                    }
                    match conn.timeline_history(next).await {
                        Ok((name, content)) => queue.push_back(Job::History { name, content }),
                        Err(e) => { ending = Some(Err(e)); continue; }
                    }
                    timeline = next;
                    seg = Segment { timeline, start: switch - switch % seg_size, data: Vec::new() };
                    if let Err(e) = conn.start(&opts.slot, timeline, seg.start).await {
                        ending = Some(Err(e));
                        continue;
                    }
                    progress.status.timeline = timeline;
                    tracing::info!(timeline, start = %format_lsn(seg.start), "following the new timeline");
                }
                Err(e) => ending = Some(Err(e)),
            },
            joined = async {
                match inflight.as_mut() {
                    Some(upload) => upload.await,
                    None => std::future::pending().await,
                }
            }, if inflight.is_some() => {
                inflight = None;
                let (job, outcome) = joined.map_err(|_| PgError::Usage("a WAL upload panicked".into()))?;
                match outcome {
                    Ok(end) => {
                        if let Some(end) = end {
                            progress.stored_to(end);
                        }
                        if matches!(job, Job::Partial { .. }) {
                            progress.status.partial_uploads += 1;
                        } else if end.is_some() {
                            progress.status.segments_stored += 1;
                        }
                        retry_at = None;
                        if ending.is_none() {
                            if let Err(e) = conn.send_status(progress.stored).await {
                                ending = Some(Err(e));
                            }
                            last_status_sent = Instant::now();
                        }
                        progress.publish(status, opts.status_file.as_ref());
                    }
                    Err(e @ PgError::Conflict { .. }) => return Err(e),
                    // Stopping anyway: the slot keeps what is not stored
                    // for the next run, so there is no waiting out the store.
                    Err(e) if ending.is_some() => return Err(e),
                    Err(e) => {
                        // The bytes are still here (and in the slot): try again.
                        tracing::warn!(error = %e, "storing WAL failed; retrying");
                        queue.push_front(job);
                        progress.status.last_error = Some(e.to_string());
                        retry_at = Some(Instant::now() + RETRY_DELAY);
                    }
                }
            },
            () = tokio::time::sleep_until(wake_at.into()) => {}
            _ = tick.tick() => {
                if ending.is_none() && last_status_sent.elapsed() >= STATUS_INTERVAL {
                    if let Err(e) = conn.send_status(progress.stored).await {
                        ending = Some(Err(e));
                    }
                    last_status_sent = Instant::now();
                }
                progress.publish(status, opts.status_file.as_ref());
            }
            () = shutdown.requested() => {
                ending.get_or_insert(Ok(()));
            }
        }
    }
}

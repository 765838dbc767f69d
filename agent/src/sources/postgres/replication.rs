//! A physical replication connection: PostgreSQL's streaming replication
//! sub-protocol (`replication=true`), spoken over the wire codec of
//! `postgres-protocol`. The driver (`tokio-postgres`) has no COPY BOTH
//! mode, and no maintained crate streams physical WAL, so the few
//! replication messages (`IDENTIFY_SYSTEM`, slots, `START_REPLICATION`,
//! XLogData, keepalives and standby status updates) are read here.

use lifeboat_common::repo::format::wal::Lsn;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::PgError;
use super::connect::ConnectArgs;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
/// `CopyBothResponse`, which `postgres-protocol` does not parse.
const COPY_BOTH_RESPONSE: u8 = b'W';

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// What the server sends while streaming.
#[derive(Debug)]
pub enum Streamed {
    /// WAL bytes starting at `start`; `server_end` is the server's current end of WAL.
    XLogData {
        /// The LSN of the first byte.
        start: u64,
        /// The server's end of WAL.
        server_end: u64,
        /// The WAL bytes.
        data: Bytes,
    },
    /// A heartbeat with the server's end of WAL; `reply` asks for a status update now.
    Keepalive {
        /// The server's end of WAL.
        server_end: u64,
        /// Whether the server wants a status update now.
        reply: bool,
    },
    /// The timeline ended (the server was promoted past it): streaming
    /// continues on `next_timeline`, which forked at `switch_lsn`.
    TimelineEnd {
        /// The next timeline and the LSN it forked at, if the server said.
        next_timeline: Option<(u32, u64)>,
    },
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone)]
pub struct SystemId {
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// The server's current timeline.
    pub timeline: u32,
    /// The server's current WAL flush position.
    pub xlogpos: u64,
}

/// A replication slot's position, from `READ_REPLICATION_SLOT`.
#[derive(Debug, Clone, Copy)]
pub struct SlotPosition {
    /// Oldest WAL the slot holds (what was last reported flushed).
    pub restart_lsn: u64,
    /// Its timeline.
    pub restart_timeline: Option<u32>,
}

/// One replication connection.
pub struct ReplicationConn {
    socket: Box<dyn Socket>,
    read: BytesMut,
    write: BytesMut,
    describe: String,
}

/// Formats an LSN the way PostgreSQL does (`X/Y`).
pub fn format_lsn(lsn: u64) -> String {
    Lsn(lsn).to_string()
}

fn protocol(what: impl Into<String>) -> PgError {
    PgError::Replication(what.into())
}

fn server_error(context: &str, body: &backend::ErrorResponseBody) -> PgError {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    protocol(format!("{context}: server said {severity} {code}: {message}"))
}

/// Asks the server for TLS (an SSLRequest before the startup message) and
/// makes the handshake, the certificate checked against the CA and `host`.
async fn start_tls(
    mut tcp: tokio::net::TcpStream,
    host: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    describe: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, PgError> {
    let failed = |e: std::io::Error| protocol(format!("asking {describe} for TLS: {e}"));
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(failed)?;
    match tcp.read_u8().await.map_err(failed)? {
        b'S' => {}
        b'N' => return Err(protocol(format!("{describe} does not accept TLS (ssl = off), and sslmode asks for it"))),
        other => return Err(protocol(format!("{describe} answered the TLS request with {other:#x}"))),
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| protocol(format!("{describe}: {host:?} is not a name TLS can check: {e}")))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| protocol(format!("TLS handshake with {describe}: {e}")))
}

impl ReplicationConn {
    /// Opens a physical replication connection as `args` describes.
    pub async fn connect(args: &ConnectArgs, application_name: &str) -> Result<Self, PgError> {
        let describe = args.describe();
        // Asked before dialling: TLS over a socket directory is refused, never skipped.
        let tls = args.tls()?;
        let socket: Box<dyn Socket> = if args.host().starts_with('/') {
            let path = format!("{}/.s.PGSQL.{}", args.host(), args.port());
            Box::new(tokio::net::UnixStream::connect(&path).await.map_err(PgError::io("connecting to", &path))?)
        } else {
            let addr = (args.host(), args.port());
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| protocol(format!("connecting to {describe}: {e}")))?;
            tcp.set_nodelay(true).map_err(|e| protocol(format!("connecting to {describe}: {e}")))?;
            match tls {
                Some(tls) => Box::new(start_tls(tcp, args.host(), tls, &describe).await?),
                None => Box::new(tcp),
            }
        };
        let mut conn =
            ReplicationConn { socket, read: BytesMut::with_capacity(1 << 20), write: BytesMut::new(), describe };
        let user = args.user_or_default();
        let params = [("user", user.as_str()), ("replication", "true"), ("application_name", application_name)];
        frontend::startup_message(params, &mut conn.write).map_err(|e| protocol(e.to_string()))?;
        conn.flush().await?;
        conn.authenticate(&user, args.password().as_deref()).await?;
        Ok(conn)
    }

    async fn authenticate(&mut self, user: &str, password: Option<&str>) -> Result<(), PgError> {
        let need_password = || protocol("the server asks for a password: set PGPASSWORD");
        loop {
            match self.message().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let pw = password.ok_or_else(need_password)?;
                    frontend::password_message(pw.as_bytes(), &mut self.write).map_err(|e| protocol(e.to_string()))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let pw = password.ok_or_else(need_password)?;
                    let hashed = md5_hash(user.as_bytes(), pw.as_bytes(), body.salt());
                    frontend::password_message(hashed.as_bytes(), &mut self.write)
                        .map_err(|e| protocol(e.to_string()))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let pw = password.ok_or_else(need_password)?;
                    self.scram(body, pw).await?;
                }
                backend::Message::ErrorResponse(body) => {
                    return Err(server_error(&format!("connecting to {}", self.describe), &body));
                }
                backend::Message::ReadyForQuery(_) => return Ok(()),
                _ => {}
            }
        }
    }

    async fn scram(&mut self, body: backend::AuthenticationSaslBody, password: &str) -> Result<(), PgError> {
        let mut offered = body.mechanisms();
        let mut scram_offered = false;
        while let Some(m) = offered.next().map_err(|e| protocol(e.to_string()))? {
            scram_offered |= m == sasl::SCRAM_SHA_256;
        }
        if !scram_offered {
            return Err(protocol("the server offers no SASL mechanism Lifeboat speaks (SCRAM-SHA-256)"));
        }
        let mut scram = sasl::ScramSha256::new(password.as_bytes(), sasl::ChannelBinding::unsupported());
        let err = |e: std::io::Error| protocol(format!("SCRAM authentication: {e}"));
        frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut self.write).map_err(err)?;
        self.flush().await?;
        match self.message().await? {
            backend::Message::AuthenticationSaslContinue(b) => scram.update(b.data()).map_err(err)?,
            backend::Message::ErrorResponse(b) => return Err(server_error("SCRAM authentication", &b)),
            _ => return Err(protocol("SCRAM authentication: unexpected message")),
        }
        frontend::sasl_response(scram.message(), &mut self.write).map_err(err)?;
        self.flush().await?;
        match self.message().await? {
            backend::Message::AuthenticationSaslFinal(b) => scram.finish(b.data()).map_err(err),
            backend::Message::ErrorResponse(b) => Err(server_error("SCRAM authentication", &b)),
            _ => Err(protocol("SCRAM authentication: unexpected message")),
        }
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        let buf = self.write.split();
        self.socket.write_all(&buf).await.map_err(|e| protocol(format!("writing to {}: {e}", self.describe)))?;
        self.socket.flush().await.map_err(|e| protocol(format!("writing to {}: {e}", self.describe)))
    }

    /// Reads until one whole message is buffered. Cancel-safe: a partial
    /// message stays in the buffer for the next call.
    async fn fill(&mut self) -> Result<(), PgError> {
        loop {
            if let Some(h) = backend::Header::parse(&self.read).map_err(|e| protocol(e.to_string()))?
                && self.read.len() > h.len() as usize
            {
                return Ok(());
            }
            let n = self
                .socket
                .read_buf(&mut self.read)
                .await
                .map_err(|e| protocol(format!("reading from {}: {e}", self.describe)))?;
            if n == 0 {
                return Err(protocol(format!("{} closed the replication connection", self.describe)));
            }
        }
    }

    /// The next message, with notices and parameter changes skipped.
    async fn message(&mut self) -> Result<backend::Message, PgError> {
        loop {
            self.fill().await?;
            let msg = backend::Message::parse(&mut self.read).map_err(|e| protocol(e.to_string()))?;
            match msg {
                Some(backend::Message::NoticeResponse(_) | backend::Message::ParameterStatus(_)) => {}
                Some(backend::Message::BackendKeyData(_)) => {}
                Some(m) => return Ok(m),
                None => {}
            }
        }
    }

    /// Runs a replication command; returns its rows (text columns).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        frontend::query(sql, &mut self.write).map_err(|e| protocol(e.to_string()))?;
        self.flush().await?;
        self.rows_until_ready(sql).await
    }

    async fn rows_until_ready(&mut self, what: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.message().await? {
                backend::Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut cols = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(r) = ranges.next().map_err(|e| protocol(e.to_string()))? {
                        cols.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(cols);
                }
                backend::Message::ErrorResponse(body) => failure = Some(server_error(what, &body)),
                backend::Message::ReadyForQuery(_) => return failure.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemId, PgError> {
        let rows = self.query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten().ok_or_else(|| protocol("IDENTIFY_SYSTEM: missing column"));
        Ok(SystemId {
            system_identifier: col(0)?,
            timeline: col(1)?.parse().map_err(|_| protocol("IDENTIFY_SYSTEM: bad timeline"))?,
            xlogpos: parse_lsn(&col(2)?)?,
        })
    }

    /// The server's WAL segment size in bytes (`SHOW wal_segment_size`).
    pub async fn wal_segment_size(&mut self) -> Result<u64, PgError> {
        let rows = self.query("SHOW wal_segment_size").await?;
        let text = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
        parse_size(&text).ok_or_else(|| protocol(format!("cannot read wal_segment_size {text:?}")))
    }

    /// The slot's position, or `None` if there is no such slot.
    pub async fn read_slot(&mut self, slot: &str) -> Result<Option<SlotPosition>, PgError> {
        let rows = self.query(&format!("READ_REPLICATION_SLOT {}", quote_ident(slot))).await?;
        let Some(row) = rows.first() else { return Ok(None) };
        if row.first().cloned().flatten().is_none() {
            return Ok(None);
        }
        match row.get(1).cloned().flatten() {
            // A slot created without reserving WAL has no position yet.
            None => Ok(None),
            Some(lsn) => Ok(Some(SlotPosition {
                restart_lsn: parse_lsn(&lsn)?,
                restart_timeline: row.get(2).cloned().flatten().and_then(|t| t.parse().ok()),
            })),
        }
    }

    /// Creates a physical slot that holds WAL from now on.
    pub async fn create_slot(&mut self, slot: &str) -> Result<(), PgError> {
        self.query(&format!("CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL", quote_ident(slot))).await.map(|_| ())
    }

    /// The history file of `timeline`: its name and content.
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<(String, Vec<u8>), PgError> {
        let rows = self.query(&format!("TIMELINE_HISTORY {timeline}")).await?;
        let row = rows.first().ok_or_else(|| protocol("TIMELINE_HISTORY returned no row"))?;
        let name = row.first().cloned().flatten().ok_or_else(|| protocol("TIMELINE_HISTORY: no file name"))?;
        let content = row.get(1).cloned().flatten().unwrap_or_default();
        Ok((name, content.into_bytes()))
    }

    /// Starts streaming `timeline` from `start` through `slot`.
    pub async fn start(&mut self, slot: &str, timeline: u32, start: u64) -> Result<(), PgError> {
        let sql =
            format!("START_REPLICATION SLOT {} PHYSICAL {} TIMELINE {timeline}", quote_ident(slot), format_lsn(start));
        frontend::query(&sql, &mut self.write).map_err(|e| protocol(e.to_string()))?;
        self.flush().await?;
        self.fill().await?;
        if self.read[0] == COPY_BOTH_RESPONSE {
            // Its column formats say nothing for binary WAL.
            let len = u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
            self.read.advance(len + 1);
            return Ok(());
        }
        match self.message().await? {
            backend::Message::ErrorResponse(body) => {
                let e = server_error(&sql, &body);
                self.rows_until_ready(&sql).await.ok();
                Err(e)
            }
            _ => Err(protocol(format!("{sql}: unexpected answer"))),
        }
    }

    /// The next streamed message. Cancel-safe.
    pub async fn next(&mut self) -> Result<Streamed, PgError> {
        match self.message().await? {
            backend::Message::CopyData(body) => parse_copy_data(body.into_bytes()),
            backend::Message::CopyDone => {
                // The server finished the timeline: end our side too, and
                // read where the next one starts.
                frontend::copy_done(&mut self.write);
                self.flush().await?;
                let rows = self.rows_until_ready("end of timeline").await?;
                let next = rows.first().and_then(|r| {
                    let tli = r.first().cloned().flatten()?.parse().ok()?;
                    let lsn = parse_lsn(&r.get(1).cloned().flatten()?).ok()?;
                    Some((tli, lsn))
                });
                Ok(Streamed::TimelineEnd { next_timeline: next })
            }
            backend::Message::ErrorResponse(body) => Err(server_error("streaming WAL", &body)),
            _ => Err(protocol("unexpected message while streaming WAL")),
        }
    }

    /// Tells the server everything up to `lsn` is safely stored (written,
    /// flushed and "applied" alike, so no `synchronous_commit` level can
    /// acknowledge a commit the repository does not hold).
    pub async fn send_status(&mut self, lsn: u64) -> Result<(), PgError> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(lsn);
        msg.put_u64(lsn);
        msg.put_u64(lsn);
        msg.put_i64(pg_now());
        msg.put_u8(0);
        frontend::CopyData::new(msg.freeze()).map_err(|e| protocol(e.to_string()))?.write(&mut self.write);
        self.flush().await
    }
}

fn parse_copy_data(mut b: Bytes) -> Result<Streamed, PgError> {
    let short = || protocol("short replication message");
    if b.is_empty() {
        return Err(short());
    }
    match b.get_u8() {
        b'w' => {
            if b.remaining() < 24 {
                return Err(short());
            }
            let start = b.get_u64();
            let server_end = b.get_u64();
            let _sent_at = b.get_i64();
            Ok(Streamed::XLogData { start, server_end, data: b })
        }
        b'k' => {
            if b.remaining() < 17 {
                return Err(short());
            }
            let server_end = b.get_u64();
            let _sent_at = b.get_i64();
            Ok(Streamed::Keepalive { server_end, reply: b.get_u8() != 0 })
        }
        other => Err(protocol(format!("unknown replication message {:?}", other as char))),
    }
}

/// Now, in microseconds since PostgreSQL's epoch.
fn pg_now() -> i64 {
    let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_OFFSET_MICROS
}

fn parse_lsn(text: &str) -> Result<u64, PgError> {
    text.parse::<Lsn>().map(|l| l.0).map_err(|e| protocol(e.to_string()))
}

/// `16MB`, `1GB`, … as bytes.
fn parse_size(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let unit = match &text[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    Some(n * unit)
}

/// A slot name as a quoted identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_sizes() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("sixteen"), None);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");

        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x100);
        w.put_u64(0x200);
        w.put_i64(0);
        w.put_slice(b"wal!");
        match parse_copy_data(w.freeze()).unwrap() {
            Streamed::XLogData { start, server_end, data } => {
                assert_eq!((start, server_end, &data[..]), (0x100, 0x200, &b"wal!"[..]));
            }
            other => panic!("{other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(7);
        k.put_i64(0);
        k.put_u8(1);
        assert!(matches!(parse_copy_data(k.freeze()).unwrap(), Streamed::Keepalive { server_end: 7, reply: true }));
        assert!(parse_copy_data(Bytes::from_static(b"w\0\0")).is_err());
    }
}

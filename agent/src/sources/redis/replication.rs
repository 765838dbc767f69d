//! Asking a server for an RDB the way a replica does: log in, `REPLCONF
//! capa eof` (a diskless master may then stream the RDB as it writes it,
//! framed by a random end mark), `REPLCONF rdb-only 1` (the master ends the
//! transfer after the RDB instead of following it with its writes), `PSYNC
//! ? -1` (a full resynchronisation). The RDB then comes as `$<length>` or
//! `$EOF:<40-byte mark>` … `<mark>`, after as many keep-alive newlines as
//! the master sends while it forks and writes.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::RedisError;
use super::endpoint::{Access, HostPort};
use super::server::{Io, dial};

/// How long the link may stay silent (keep-alives count) before it is
/// given up; a master sends a newline every second while it prepares.
const SILENCE: Duration = Duration::from_secs(120);
/// Bytes read from the socket at a time.
const PIECE: usize = 256 * 1024;
/// The length of a diskless transfer's end mark.
const MARK_LEN: usize = 40;
/// What cuts a transfer short, said with the cut.
const CUT_CAUSES: &str = "the link was killed, the server failed over or restarted, or it gave up waiting for a reader slower than its repl-timeout";
/// The longest status line accepted.
const MAX_LINE: u64 = 4096;

/// What the master's `+FULLRESYNC` names: where the RDB stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullResync {
    /// The master's replication id.
    pub replication_id: String,
    /// The replication offset the RDB corresponds to.
    pub offset: u64,
}

/// A replication link that has asked for a full resynchronisation.
pub struct RdbLink {
    server: String,
    reader: BufReader<Box<dyn Io>>,
}

impl RdbLink {
    /// Dials `addr`, logs in and asks for an RDB; returns once the master
    /// has started producing it (`+FULLRESYNC` comes as it forks).
    pub async fn open(addr: &HostPort, access: &Access) -> Result<(RdbLink, FullResync), RedisError> {
        let stream = dial(addr, access).await?;
        let mut link = RdbLink { server: addr.to_string(), reader: BufReader::with_capacity(PIECE, stream) };
        if let Some(password) = &access.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &access.user {
                auth.arg(user);
            }
            link.call(auth.arg(password), "AUTH").await?;
        }
        link.call(redis::cmd("REPLCONF").arg("capa").arg("eof"), "REPLCONF").await?;
        // Before Redis 7 the option is unknown: the master then follows the
        // RDB with its write stream, which is never read.
        match link.call(redis::cmd("REPLCONF").arg("rdb-only").arg("1"), "REPLCONF rdb-only").await {
            Err(RedisError::Refused { reply, .. }) if reply.starts_with("ERR") => {
                tracing::debug!(server = link.server, reply, "the server does not know REPLCONF rdb-only");
            }
            other => {
                other?;
            }
        }
        let reply = link.call(redis::cmd("PSYNC").arg("?").arg("-1"), "PSYNC").await?;
        let mut words = reply.split_whitespace();
        let resync = match (words.next(), words.next(), words.next().and_then(|o| o.parse().ok())) {
            (Some("FULLRESYNC"), Some(id), Some(offset)) => FullResync { replication_id: id.to_owned(), offset },
            _ => return Err(link.protocol(format!("PSYNC answered {reply:?}, not +FULLRESYNC <id> <offset>"))),
        };
        Ok((link, resync))
    }

    fn protocol(&self, what: String) -> RedisError {
        RedisError::Protocol { server: self.server.clone(), what }
    }

    /// Sends `cmd` and reads its status reply, past keep-alive newlines.
    async fn call(&mut self, cmd: &redis::Cmd, name: &str) -> Result<String, RedisError> {
        let packed = cmd.get_packed_command();
        let sent = async {
            self.reader.get_mut().write_all(&packed).await?;
            self.reader.get_mut().flush().await
        };
        sent.await.map_err(|cause| RedisError::Connect {
            server: self.server.clone(),
            what: "sending a command",
            cause,
        })?;
        loop {
            let line = self.line().await?;
            match line.as_bytes().first() {
                None => continue,
                Some(b'+') => return Ok(line[1..].to_owned()),
                Some(b'-') => return Err(RedisError::refused(&self.server, name, &line[1..])),
                Some(_) => return Err(self.protocol(format!("{name} answered {line:?}"))),
            }
        }
    }

    /// One line, without its `\r\n`; an empty one is a keep-alive.
    async fn line(&mut self) -> Result<String, RedisError> {
        let mut line = Vec::new();
        let mut limited = (&mut self.reader).take(MAX_LINE);
        let n = tokio::time::timeout(SILENCE, limited.read_until(b'\n', &mut line))
            .await
            .map_err(|_| self.protocol(format!("no answer for {}s", SILENCE.as_secs())))?
            .map_err(|cause| RedisError::Connect { server: self.server.clone(), what: "reading an answer", cause })?;
        if n == 0 {
            return Err(self.protocol("the server closed the connection".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(self.protocol("an answer line has no end".into()));
        }
        let text = String::from_utf8_lossy(&line);
        Ok(text.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Waits for the RDB's header and returns its payload.
    pub async fn payload(mut self) -> Result<RdbPayload, RedisError> {
        let header = loop {
            let line = self.line().await?;
            if !line.is_empty() {
                break line;
            }
        };
        let framing = if let Some(mark) = header.strip_prefix("$EOF:") {
            let mark: [u8; MARK_LEN] = mark
                .as_bytes()
                .try_into()
                .map_err(|_| self.protocol(format!("the end mark {mark:?} is not {MARK_LEN} bytes")))?;
            Framing::Mark { mark, held: Vec::new(), ended: false }
        } else if let Some(len) = header.strip_prefix('$').and_then(|l| l.parse().ok()) {
            Framing::Length { total: len, remaining: len }
        } else {
            return Err(self.protocol(format!("expected the RDB's header ($<length> or $EOF:<mark>), got {header:?}")));
        };
        Ok(RdbPayload { server: self.server, reader: self.reader, framing })
    }
}

/// How the RDB's end is known.
enum Framing {
    /// By its length, given up front (a master that wrote it to disk first).
    Length { total: u64, remaining: u64 },
    /// By a random mark after it (a diskless master streaming as it writes):
    /// the last bytes seen are held back until the next read shows they
    /// were not the mark.
    Mark { mark: [u8; MARK_LEN], held: Vec<u8>, ended: bool },
}

/// The RDB as it arrives.
pub struct RdbPayload {
    server: String,
    reader: BufReader<Box<dyn Io>>,
    framing: Framing,
}

impl RdbPayload {
    /// Its length, when the master said it up front.
    pub fn length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length { total, .. } => Some(total),
            Framing::Mark { .. } => None,
        }
    }

    /// The server it comes from.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The next piece of the RDB, `None` after its last; a connection that
    /// ends before the RDB does is an error.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, RedisError> {
        let (server, reader) = (self.server.as_str(), &mut self.reader);
        let cut_short = |what: String| RedisError::Rdb { server: server.to_owned(), what };
        loop {
            let mut buf = Vec::new();
            match &mut self.framing {
                Framing::Length { remaining: 0, .. } | Framing::Mark { ended: true, .. } => return Ok(None),
                Framing::Length { total, remaining } => {
                    let want = (*remaining).min(PIECE as u64) as usize;
                    let n = read(reader, &mut buf, want).await.map_err(cut_short)?;
                    if n == 0 {
                        let got = *total - *remaining;
                        return Err(cut_short(format!(
                            "was cut short: the link closed after {got} of {total} bytes ({CUT_CAUSES})"
                        )));
                    }
                    *remaining -= n as u64;
                    return Ok(Some(buf));
                }
                Framing::Mark { mark, held, ended } => {
                    if read(reader, &mut buf, PIECE).await.map_err(cut_short)? == 0 {
                        return Err(cut_short(format!(
                            "was cut short: the link closed before its end mark ({CUT_CAUSES})"
                        )));
                    }
                    let mut piece = std::mem::take(held);
                    piece.extend_from_slice(&buf);
                    if piece.ends_with(mark.as_slice()) {
                        piece.truncate(piece.len() - MARK_LEN);
                        *ended = true;
                    } else {
                        let keep = piece.len().saturating_sub(MARK_LEN);
                        held.extend_from_slice(&piece[keep..]);
                        piece.truncate(keep);
                    }
                    if !piece.is_empty() || *ended {
                        return Ok(Some(piece));
                    }
                }
            }
        }
    }
}

/// Reads up to `want` bytes into `buf` (cleared first); 0 means the
/// connection ended.
async fn read(reader: &mut BufReader<Box<dyn Io>>, buf: &mut Vec<u8>, want: usize) -> Result<usize, String> {
    buf.clear();
    buf.reserve(want);
    let mut limited = reader.take(want as u64);
    tokio::time::timeout(SILENCE, limited.read_buf(buf))
        .await
        .map_err(|_| format!("stalled: no data for {}s", SILENCE.as_secs()))?
        .map_err(|e| format!("transfer broke: {e}"))
}

//! The audit log: every tool decision as one JSON line, fsynced before the
//! result is used, hash-chained so editing, deleting or cutting records is
//! detected by [`verify`] (`parlor audit verify FILE`).
//!
//! # Format
//! One record per line, fields in this order: `seq` (from 1), `time`
//! (RFC 3339 UTC), `decision`, `principal`, `role`, `session`, `server`,
//! `tool`, `arguments` (redacted), `result_bytes`, `result_sha256`,
//! `tool_error`, `latency_ms`, `reason`, `prev`, `hash`.
//! `hash` is the SHA-256 (hex) of the line's exact bytes with the trailing
//! `,"hash":"…"` member removed; `prev` is the previous record's `hash`
//! (64 zeros for the first). Hashing the bytes as written, rather than a
//! re-serialisation, keeps verification independent of JSON key order.
//!
//! # Durability
//! One writer thread owns the file. [`AuditLog::append`] queues a record
//! and waits; the writer drains everything queued, writes it, calls
//! `sync_data` once for the whole group (group commit), updates the head
//! sidecar, then acknowledges each waiter. So an acknowledged record is on
//! disk, and concurrent appends share one fsync.
//!
//! A call's intent ([`Decision::Calling`], [`AuditLog::append_intent`]) is
//! acknowledged once written, before the fsync: written is enough to
//! survive the process dying mid-call (`kill -9`, a crash), which is what
//! it is for, and it costs no fsync of its own: the outcome's fsync, or
//! the next group's, makes it durable, or the writer syncs it once nothing
//! has come for [`INTENT_SYNC_AFTER`] (a call still running).
//!
//! # Truncation and torn writes
//! A chain cannot see its own tail cut off, so `<file>.head` holds the last
//! `seq` and `hash`, rewritten in place after each group's fsync as one
//! fixed-size write (a sector, so whole or not at all): it is never ahead
//! of the durable log, and a log shorter than its head has been truncated.
//! The head is not fsynced itself: after a power cut it may lag the log,
//! which [`verify`] allows, and it costs the group no second fsync. A kill during a write can
//! leave a partial last line; it was never acknowledged (the ack follows the
//! fsync), so [`verify`] accepts it and reports it as an unacknowledged
//! tail, and [`AuditLog::open`] cuts it off and continues the chain. A bad
//! record anywhere else is tampering. Deleting both files, or rewriting the
//! whole chain and head, is not detectable locally: ship the head elsewhere
//! for that.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Strings in arguments longer than this (bytes) are cut: the log records
/// what was asked, not bulk data.
pub const MAX_ARGUMENT_STRING: usize = 256;
/// Records queued for the writer; when full, `append` waits (backpressure
/// on tool calls rather than an unbounded queue or lost records).
const QUEUE: usize = 1024;
/// At most this many records share one write and fsync.
const MAX_GROUP: usize = 512;
/// How long written intents wait for the next record's fsync to cover
/// them before the writer syncs them alone. Most tool calls end sooner, so
/// a call costs one fsync, not two.
pub const INTENT_SYNC_AFTER: Duration = Duration::from_millis(20);
/// The head file's size: its JSON, padded.
const HEAD_BYTES: usize = 128;
const REDACTED: &str = "[redacted]";

/// Why a log cannot be written or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: unparsable record: {reason}")]
    Unparsable { line: usize, reason: String },
    #[error("record seq {seq} was altered (its hash does not match its contents)")]
    Altered { seq: u64 },
    #[error("broken link at seq {seq}: its prev is not the hash of the record before it (a record was removed or replaced)")]
    BrokenLink { seq: u64 },
    #[error("seq gap: expected seq {expected}, found {found}")]
    SeqGap { expected: u64, found: u64 },
    #[error("truncated: the head says seq {head_seq}, the file ends at seq {last_seq}")]
    Truncated { head_seq: u64, last_seq: u64 },
    #[error("the head's hash for seq {seq} does not match that record")]
    HeadMismatch { seq: u64 },
    #[error("unreadable head file: {0}")]
    BadHead(String),
    /// An earlier write failed; nothing more is written (the file may hold
    /// a partial group, which the next open cuts off).
    #[error("the audit log could not be written: {0}")]
    Write(String),
    #[error("the audit log writer has stopped")]
    Closed,
}

/// What was decided about a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed and about to be sent to the server: written before the call
    /// (see [`AuditLog::append_intent`]), so a call the process dies in is
    /// still on record. Its outcome follows as another record.
    Calling,
    Allowed,
    Denied,
    RateLimited,
    Failed,
}

/// Who is calling: the principal and role an API key maps to (see
/// `crate::access`), and the session (a live call's id). `anonymous` with
/// role `caller` when the server has no `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContext {
    pub principal: String,
    pub role: String,
    pub session: Option<String>,
}

impl Default for AuditContext {
    fn default() -> Self {
        Self {
            principal: "anonymous".into(),
            role: "caller".into(),
            session: None,
        }
    }
}

/// One decision, as the policy layer reports it.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub context: &'a AuditContext,
    pub decision: Decision,
    pub server: &'a str,
    pub tool: &'a str,
    /// As the model sent them; redacted when the record is built.
    pub arguments: &'a Value,
    /// What the tool returned (as used), for size and hash; `None` when
    /// nothing came back.
    pub result: Option<&'a [u8]>,
    /// The tool ran and reported an error (data for the model, still
    /// `allowed`).
    pub tool_error: bool,
    pub latency: Duration,
    /// Why it was denied or failed.
    pub reason: Option<&'a str>,
}

impl<'a> AuditEntry<'a> {
    /// A decision about a call with no result: an intent, a refusal, a
    /// quarantine.
    pub fn without_result(
        context: &'a AuditContext,
        decision: Decision,
        (server, tool): (&'a str, &'a str),
        arguments: &'a Value,
        reason: Option<&'a str>,
    ) -> Self {
        Self {
            context,
            decision,
            server,
            tool,
            arguments,
            result: None,
            tool_error: false,
            latency: Duration::ZERO,
            reason,
        }
    }
}

/// A record built and redacted, waiting for its place in the chain.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The record's members from `time` to `reason`, without braces.
    body: String,
}

/// Where an appended record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: String,
}

#[derive(Serialize)]
struct Body<'a> {
    time: String,
    decision: Decision,
    principal: &'a str,
    role: &'a str,
    session: Option<&'a str>,
    server: &'a str,
    tool: &'a str,
    arguments: Value,
    result_bytes: Option<usize>,
    result_sha256: Option<String>,
    tool_error: bool,
    latency_ms: f64,
    reason: Option<String>,
}

impl Prepared {
    /// Redact, hash the result and serialise: everything but the chain, so
    /// it runs on the caller's task, not the writer's.
    pub fn new(entry: &AuditEntry<'_>) -> Self {
        let mut secrets = Vec::new();
        let arguments = redact(entry.arguments, false, &mut secrets);
        // A failure message may quote an argument back (e.g. "invalid type:
        // string \"sk-...\""): the secrets found above are scrubbed from it.
        let reason = entry.reason.map(|r| {
            secrets
                .iter()
                .fold(cap(r, 1024), |r, s| r.replace(s.as_str(), REDACTED))
        });
        let body = Body {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            decision: entry.decision,
            principal: &entry.context.principal,
            role: &entry.context.role,
            session: entry.context.session.as_deref(),
            server: entry.server,
            tool: entry.tool,
            arguments,
            result_bytes: entry.result.map(<[u8]>::len),
            result_sha256: entry.result.map(|r| hex::encode(Sha256::digest(r))),
            tool_error: entry.tool_error,
            latency_ms: (entry.latency.as_secs_f64() * 1e6).round() / 1e3,
            reason,
        };
        let json = serde_json::to_string(&body).expect("a record serialises");
        Self {
            body: json[1..json.len() - 1].to_string(),
        }
    }

    /// The record's line (with newline) at `seq` after `prev`, and its hash.
    pub fn seal(&self, seq: u64, prev: &str) -> (String, String) {
        let mut line = format!("{{\"seq\":{seq},{},\"prev\":\"{prev}\"}}", self.body);
        let hash = hex::encode(Sha256::digest(line.as_bytes()));
        line.pop();
        line.push_str(",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\"}\n");
        (line, hash)
    }
}

/// Keys whose values are never written (matched case-insensitively, `-`
/// as `_`, anywhere in the key: `x_api_key`, `refresh_token`, ...).
const SECRET_KEYS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "bearer",
];

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

/// Values that are secrets whatever their key: bearer headers and
/// `sk-`-style API keys.
fn looks_secret(s: &str) -> bool {
    s.starts_with("Bearer ") || (s.starts_with("sk-") && s.len() >= 12)
}

/// `value` with secret values replaced and long strings capped; the
/// replaced strings are collected in `secrets`.
fn redact(value: &Value, secret: bool, secrets: &mut Vec<String>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), redact(v, secret || is_secret_key(k), secrets)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| redact(v, secret, secrets)).collect())
        }
        Value::String(s) if secret || looks_secret(s) => {
            secrets.push(s.clone());
            Value::String(REDACTED.into())
        }
        Value::String(s) => Value::String(cap(s, MAX_ARGUMENT_STRING)),
        // A secret number (a PIN) is redacted too; other scalars are kept.
        other if secret && !other.is_null() => {
            secrets.push(other.to_string());
            Value::String(REDACTED.into())
        }
        other => other.clone(),
    }
}

fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[{} bytes]", &s[..cut], s.len())
}

/// A record waiting for the writer, and who to tell when it is durable.
struct Pending {
    record: Prepared,
    ack: oneshot::Sender<Result<Receipt, String>>,
    /// Acknowledge only once fsynced; else once written.
    durable: bool,
}

/// An append-only, hash-chained, fsynced log of tool decisions. Cheap to
/// share behind an `Arc`; one per file per process (two writers to one
/// file would fork the chain).
pub struct AuditLog {
    path: PathBuf,
    tx: mpsc::Sender<Pending>,
    fsyncs: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// Open (or create) the log at `path`, checking the existing chain and
    /// cutting off an unacknowledged torn tail (with a warning), and start
    /// its writer thread.
    ///
    /// # Errors
    /// The file or its directory cannot be created or read, or the
    /// existing log fails [`verify`]: a tampered log is not appended to.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let report = verify(&path)?;
        if report.torn_tail_bytes > 0 {
            tracing::warn!(
                message = "Audit log ends in a torn record; cutting it off.",
                path = %path.display(),
                bytes = report.torn_tail_bytes,
                last_seq = report.last_seq
            );
            file.set_len(report.good_bytes).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let fsyncs = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            path: path.clone(),
            head: OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(head_path(&path))
                .map_err(io)?,
            file,
            seq: report.last_seq,
            hash: report.last_hash,
            failed: None,
            fsyncs: fsyncs.clone(),
            unsynced_since: None,
            head_synced: false,
        };
        if report.head_seq.unwrap_or(0) < report.last_seq {
            // Records past the head: intents the last process wrote and
            // died before syncing. Make them durable, and the head cover
            // them, so cutting them off from now on is seen.
            writer.sync().map_err(AuditError::Write)?;
        }
        // A thread, not a task: writes and fsyncs block, and the writer
        // must outlive any one runtime's worker being busy.
        std::thread::Builder::new()
            .name("parlor-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(Self { path, tx, fsyncs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Log fsyncs so far: fewer than records when group commit batched.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Append one decision; returns once it is on disk.
    ///
    /// # Errors
    /// [`AuditError::Write`] when the write or fsync failed (now or
    /// earlier: the log stops at its first failure), [`AuditError::Closed`]
    /// if the writer is gone.
    pub async fn append(&self, entry: &AuditEntry<'_>) -> Result<Receipt, AuditError> {
        self.append_prepared(Prepared::new(entry)).await
    }

    /// [`AuditLog::append`] of an already built record.
    ///
    /// # Errors
    /// As [`AuditLog::append`].
    pub async fn append_prepared(&self, record: Prepared) -> Result<Receipt, AuditError> {
        self.queue(record, true).await
    }

    /// Append the intent to call a tool; returns once the record is
    /// written (it survives the process dying), without waiting for an
    /// fsync of its own.
    ///
    /// # Errors
    /// As [`AuditLog::append`].
    pub async fn append_intent(&self, entry: &AuditEntry<'_>) -> Result<Receipt, AuditError> {
        self.queue(Prepared::new(entry), false).await
    }

    async fn queue(&self, record: Prepared, durable: bool) -> Result<Receipt, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Pending {
                record,
                ack,
                durable,
            })
            .await
            .map_err(|_| AuditError::Closed)?;
        match done.await {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(e)) => Err(AuditError::Write(e)),
            Err(_) => Err(AuditError::Closed),
        }
    }
}

fn head_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".head");
    PathBuf::from(name)
}

struct Writer {
    path: PathBuf,
    head: File,
    file: File,
    seq: u64,
    hash: String,
    /// The first write error; every later append fails with it (fail closed).
    failed: Option<String>,
    fsyncs: Arc<AtomicU64>,
    /// Records written and not yet fsynced (intents): synced as soon as
    /// nothing else is waiting, and before the writer stops.
    unsynced_since: Option<std::time::Instant>,
    /// The head file's first write was fsynced (so its size and its data
    /// agree after a power cut); later in-place writes need not be.
    head_synced: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        // Only for waiting on the queue with a deadline.
        let clock = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build();
        loop {
            let first = if let Some(since) = self.unsynced_since {
                // Intents are on file but not on disk: the next record's
                // fsync will cover them (their calls went ahead at the
                // write, so this is on nobody's path); if none comes soon,
                // or the log is closing, sync them alone.
                let next = match &clock {
                    // The timer is made inside, where the runtime is.
                    // From the first unsynced write: a stream of intents
                    // does not put the sync off.
                    Ok(rt) => rt
                        .block_on(async {
                            let due = tokio::time::Instant::from_std(since + INTENT_SYNC_AFTER);
                            tokio::time::timeout_at(due, rx.recv()).await
                        })
                        .ok(),
                    Err(_) => match rx.try_recv() {
                        Ok(p) => Some(Some(p)),
                        Err(mpsc::error::TryRecvError::Empty) => None,
                        Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                    },
                };
                match next {
                    Some(Some(p)) => p,
                    None => {
                        let _ = self.sync();
                        continue;
                    }
                    Some(None) => {
                        let _ = self.sync();
                        return;
                    }
                }
            } else {
                match rx.blocking_recv() {
                    Some(p) => p,
                    None => return,
                }
            };
            group.push(first);
            // Everything that queued while the last fsync ran goes in this one.
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            self.commit(&mut group);
        }
    }

    /// Write `group`, acknowledge its intents, fsync if any other record
    /// needs it, then acknowledge those. Drains `group`.
    fn commit(&mut self, group: &mut Vec<Pending>) {
        let receipts = match self.write(group) {
            Ok(receipts) => receipts,
            Err(e) => {
                for p in group.drain(..) {
                    let _ = p.ack.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut durable = Vec::new();
        for (p, receipt) in group.drain(..).zip(receipts) {
            if p.durable {
                durable.push((p, receipt));
            } else {
                let _ = p.ack.send(Ok(receipt));
            }
        }
        if durable.is_empty() {
            return;
        }
        let synced = self.sync();
        for (p, receipt) in durable {
            let _ = p.ack.send(synced.clone().map(|()| receipt));
        }
    }

    /// Seal and write `group` in one write (no fsync): the receipts, in
    /// order.
    fn write(&mut self, group: &[Pending]) -> Result<Vec<Receipt>, String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let (mut seq, mut hash) = (self.seq, self.hash.clone());
        let mut buf = String::new();
        let mut receipts = Vec::with_capacity(group.len());
        for p in group {
            seq += 1;
            let (line, h) = p.record.seal(seq, &hash);
            buf.push_str(&line);
            hash = h;
            receipts.push(Receipt {
                seq,
                hash: hash.clone(),
            });
        }
        if let Err(e) = self.file.write_all(buf.as_bytes()) {
            return Err(self.fail(e));
        }
        (self.seq, self.hash) = (seq, hash);
        self.unsynced_since
            .get_or_insert_with(std::time::Instant::now);
        Ok(receipts)
    }

    /// fsync what was written, then move the head up to it.
    fn sync(&mut self) -> Result<(), String> {
        // Whatever happens, there is nothing more to try: a failed sync
        // fails the log.
        self.unsynced_since = None;
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Err(e) = self.file.sync_data() {
            return Err(self.fail(e));
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        // The records are durable; a failed head update only weakens
        // truncation detection, so it is logged, not fatal.
        if let Err(e) = self.write_head() {
            tracing::warn!(message = "Audit head not updated.", path = %self.path.display(), error = %e);
        }
        Ok(())
    }

    /// The log stops at its first failure (fail closed).
    fn fail(&mut self, e: std::io::Error) -> String {
        let e = format!("{}: {e}", self.path.display());
        tracing::error!(message = "Audit log write failed; refusing further records.", error = %e);
        self.failed = Some(e.clone());
        e
    }

    fn write_head(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let mut head = serde_json::json!({ "seq": self.seq, "hash": self.hash }).to_string();
        // Padded to a fixed size, so a shorter head never leaves the end of
        // a longer one behind (JSON allows the trailing spaces).
        let pad = HEAD_BYTES.saturating_sub(head.len() + 1);
        head.extend(std::iter::repeat_n(' ', pad));
        head.push('\n');
        self.head.write_all_at(head.as_bytes(), 0)?;
        if !self.head_synced {
            self.head.sync_all()?;
            self.head_synced = true;
        }
        Ok(())
    }
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    /// 0 and [`GENESIS`] for an empty log.
    pub last_seq: u64,
    pub last_hash: String,
    /// What the head file says, if there is one (it may lag the log by the
    /// group being committed when the process stopped).
    pub head_seq: Option<u64>,
    /// Bytes of a partial final record: written but never acknowledged.
    pub torn_tail_bytes: u64,
    /// Bytes up to the end of the last whole record.
    #[serde(skip)]
    pub good_bytes: u64,
}

/// Check a log: every record parses, hashes to its `hash`, links to the one
/// before and numbers on from it, and the file reaches the head's seq with
/// the head's hash. A partial final line is accepted as an unacknowledged
/// tail (see the module docs). A missing file is an empty log.
///
/// # Errors
/// The first problem found, naming the line or seq.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    let head = match read_head(path) {
        Ok(head) => head,
        // Read while the writer rewrote it, perhaps: once more.
        Err(AuditError::BadHead(_)) => {
            std::thread::sleep(Duration::from_millis(20));
            read_head(path)?
        }
        Err(e) => return Err(e),
    };
    let good = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (mut seq, mut hash) = (0u64, GENESIS.to_string());
    // The whole records, without the final newline (none when empty).
    let lines = data[..good.saturating_sub(1)]
        .split(|&b| b == b'\n')
        .take_while(|_| good > 0);
    for (i, line) in lines.enumerate() {
        let record = check_line(line, i + 1)?;
        if record.prev != hash {
            return Err(AuditError::BrokenLink { seq: record.seq });
        }
        if record.seq != seq + 1 {
            return Err(AuditError::SeqGap {
                expected: seq + 1,
                found: record.seq,
            });
        }
        seq = record.seq;
        hash = record.hash;
        if let Some((hs, hh)) = &head {
            if *hs == seq && *hh != hash {
                return Err(AuditError::HeadMismatch { seq });
            }
        }
    }
    if let Some((head_seq, _)) = &head {
        if *head_seq > seq {
            return Err(AuditError::Truncated {
                head_seq: *head_seq,
                last_seq: seq,
            });
        }
    }
    Ok(VerifyReport {
        records: seq,
        last_seq: seq,
        last_hash: hash,
        head_seq: head.map(|(s, _)| s),
        torn_tail_bytes: (data.len() - good) as u64,
        good_bytes: good as u64,
    })
}

struct Link {
    seq: u64,
    prev: String,
    hash: String,
}

/// One line: parsed, and its hash recomputed over its bytes minus the
/// trailing `,"hash":"…"` member.
fn check_line(line: &[u8], n: usize) -> Result<Link, AuditError> {
    let bad = |reason: String| AuditError::Unparsable { line: n, reason };
    let value: Value = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
    let field = |k: &str| value.get(k).ok_or_else(|| bad(format!("no `{k}`")));
    let seq = field("seq")?
        .as_u64()
        .ok_or_else(|| bad("`seq` is not a number".into()))?;
    let text = |k: &str| -> Result<String, AuditError> {
        field(k)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(format!("`{k}` is not a string")))
    };
    let (prev, hash) = (text("prev")?, text("hash")?);
    let suffix = format!(",\"hash\":\"{hash}\"}}");
    let Some(body) = line.strip_suffix(suffix.as_bytes()) else {
        return Err(bad("`hash` is not the last member".into()));
    };
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    if hex::encode(hasher.finalize()) != hash {
        return Err(AuditError::Altered { seq });
    }
    Ok(Link { seq, prev, hash })
}

/// The head's seq and hash, or none.
fn read_head(path: &Path) -> Result<Option<(u64, String)>, AuditError> {
    match std::fs::read(head_path(path)) {
        // Blank (or zeros after a power cut): created by a writer that had
        // not written it yet. No more than a missing head, which deleting
        // it would give anyway.
        Ok(h) if h.iter().all(|b| *b == 0 || b.is_ascii_whitespace()) => Ok(None),
        Ok(h) => parse_head(&h).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::Io {
            path: head_path(path),
            source: e,
        }),
    }
}

fn parse_head(bytes: &[u8]) -> Result<(u64, String), AuditError> {
    let bad = || AuditError::BadHead(String::from_utf8_lossy(bytes).into_owned());
    let v: Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
    let seq = v.get("seq").and_then(Value::as_u64).ok_or_else(bad)?;
    let hash = v.get("hash").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((seq, hash.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_by_key_and_by_shape() {
        let mut found = Vec::new();
        let out = redact(
            &json!({"API-Key": "abc", "q": "Bearer xyz", "n": {"pin_token": 1234}, "ok": 5}),
            false,
            &mut found,
        );
        assert_eq!(
            out,
            json!({"API-Key": REDACTED, "q": REDACTED, "n": {"pin_token": REDACTED}, "ok": 5})
        );
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn long_strings_are_capped() {
        let out = redact(&json!({"q": "x".repeat(1000)}), false, &mut Vec::new());
        let q = out["q"].as_str().unwrap();
        assert!(q.len() < 300 && q.ends_with("…[1000 bytes]"), "{q}");
    }
}

//! The single writer thread. Requests hand records to it over a bounded queue and wait on
//! a oneshot for their own record's commit; the thread takes everything queued (group
//! commit: one transaction and one fsync for many records), numbers and chains them, adds a
//! signed checkpoint every `checkpoint_every` records or `checkpoint_interval`, commits, and
//! answers each caller. SQLite runs here only, never on the async runtime.
//!
//! On a failed commit the transaction is rolled back, the chain head stays where it was,
//! every caller in the batch gets an error, and [`AuditLog::healthy`] turns false. While
//! unhealthy, records are refused without a write, and the thread probes once a second
//! with a `resumed` record (once the filesystem has [`RESUME_HEADROOM`] free), so service
//! comes back by itself once writes succeed again, and does not flicker on a full disk.
//!
//! Before it appends anything the writer runs the head check ([`super::head`]): it never
//! signs over a chain that does not extend its own last checkpoint. The first commit in
//! every file is sealed by a checkpoint (so no file is ever without one), and so is the
//! `start` record ([`AuditLog::append_sealed`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::keys::SigningKey;
use super::record::{GENESIS, Kind, Record, chain_hash, checkpoint_message};
use super::rotate::{Rotation, apply_retention, archived_name};
use super::{AuditError, now_ms};

/// How the writer runs (from `[audit]`).
#[derive(Debug)]
pub struct WriterSettings {
    pub db: PathBuf,
    /// This node's name, in every record (`node`; empty: not named).
    pub node: String,
    pub signing_key: SigningKey,
    /// A checkpoint at least every this many records.
    pub checkpoint_every: u64,
    /// And at least this often while records arrive.
    pub checkpoint_interval: Duration,
    /// How long a request waits for its record's commit before it is refused.
    pub write_timeout: Duration,
    /// Records waiting for the writer; beyond it requests are refused (503).
    pub queue: usize,
    /// Rotation by size/age, retention of rotated files.
    pub rotation: Rotation,
}

/// How long the writer keeps looking for the next record, yielding the CPU between looks,
/// before it sleeps on the queue. Under load the next record (another request's admission,
/// this one's completion) is almost always there within it, and a writer that never sleeps
/// spares every request the cost of waking it: on the 2-vCPU VM of bench/gateway it raised
/// the gateway's max throughput by 3–12 % against nginx in four paired rounds and lowered the
/// p99 at 5,000 req/s in five of six (bench/results/gateway.md, "The audit writer looks before
/// it sleeps"). Idle, it costs at most this much CPU per commit.
const SPIN: Duration = Duration::from_micros(50);

/// The look after a commit of at most [`LIGHT_BATCH`] records: light load, where a request's
/// completion record follows its admission after one engine round trip, longer than
/// [`SPIN`]. Looking this long saves that request a wake-up of the writer (unloaded p50
/// −12 to −17 % in three paired rounds); after larger batches it would only burn CPU (max
/// throughput −3 to −8 % with it after every commit), so it is not used there.
const SPIN_LIGHT: Duration = Duration::from_micros(300);

/// Commits of at most this many records count as light load.
const LIGHT_BATCH: usize = 2;

/// The next message, or the tick's timeout: looks for `spin`, then sleeps.
fn next_message(
    rx: &Receiver<Msg>,
    tick: Duration,
    spin: Duration,
) -> Result<Msg, RecvTimeoutError> {
    let until = Instant::now() + spin;
    loop {
        match rx.try_recv() {
            Ok(msg) => return Ok(msg),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) if Instant::now() >= until => return rx.recv_timeout(tick),
            Err(TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// Records in one transaction at most.
const MAX_BATCH: usize = 4096;

/// Free space the log's filesystem needs before a failed log resumes. Without it, a small
/// commit that fits into pages SQLite already holds would bring service back for a moment
/// on a disk that is still full.
const RESUME_HEADROOM: u64 = 1 << 20;

type Reply = oneshot::Sender<Result<u64, AuditError>>;

enum Msg {
    /// A record, its caller (none for a detached record), and whether the commit that
    /// holds it must also write a checkpoint.
    Append(Record, Option<Reply>, bool),
    Close(oneshot::Sender<()>),
}

/// The handle requests and the server use. Cheap to share (`Arc`).
pub struct AuditLog {
    tx: SyncSender<Msg>,
    healthy: Arc<AtomicBool>,
    write_timeout: Duration,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) public_key_hex: String,
    /// Per-client budget of unauthenticated refusal records (kept across reloads).
    refusals: super::flood::RefusalBudget,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the database, appends a `recovery` record when the previous run did
    /// not stop cleanly, and starts the writer thread. Blocking: call before serving or on
    /// the blocking pool.
    pub fn open(settings: WriterSettings) -> Result<Arc<AuditLog>, AuditError> {
        let mut state = WriterState::open(&settings)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        state.healthy = Arc::clone(&healthy);
        let public_key_hex = state.key.public_hex();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || state.run(&rx))
            .map_err(|source| AuditError::Io {
                path: settings.db.clone(),
                source,
            })?;
        Ok(Arc::new(AuditLog {
            tx,
            healthy,
            write_timeout: settings.write_timeout,
            thread: std::sync::Mutex::new(Some(thread)),
            public_key_hex,
            refusals: super::flood::RefusalBudget::default(),
        }))
    }

    /// Whether the last commit succeeded (`/readyz`).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The per-client budget of unauthenticated refusal records.
    pub fn refusals(&self) -> &super::flood::RefusalBudget {
        &self.refusals
    }

    /// Appends a record and waits for its commit; returns its sequence number.
    pub async fn append(&self, record: Record) -> Result<u64, AuditError> {
        self.send(record, false).await
    }

    /// As [`AuditLog::append`], and the same commit writes a checkpoint sealing it (the
    /// `start` record: every run begins with a signed head).
    pub async fn append_sealed(&self, record: Record) -> Result<u64, AuditError> {
        self.send(record, true).await
    }

    async fn send(&self, record: Record, seal: bool) -> Result<u64, AuditError> {
        let (reply, wait) = oneshot::channel();
        match self.tx.try_send(Msg::Append(record, Some(reply), seal)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AuditError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(AuditError::Stopped),
        }
        match tokio::time::timeout(self.write_timeout, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::Timeout(self.write_timeout)),
        }
    }

    /// Queues a record without waiting (a stream the client abandoned: nobody is left to
    /// refuse). Never blocks.
    pub fn append_detached(&self, record: Record) {
        if self.tx.try_send(Msg::Append(record, None, false)).is_err() {
            tracing::error!("audit queue full or closed: a detached audit record was dropped");
        }
    }

    /// Final checkpoint, marks the log cleanly closed, stops the thread. Blocking.
    pub fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = wait.blocking_recv();
        }
        let handle = match self.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Opens a database with the pragmas every writer and reader uses.
/// `busy` bounds how long a commit waits for a lock held by another process (a backup, an
/// operator's sqlite3 shell) before it counts as a failed write.
pub fn connect(path: &Path, busy: Duration) -> Result<Connection, AuditError> {
    let err = |source| AuditError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.busy_timeout(busy).map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL,
    ts_ms INTEGER NOT NULL, signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<String>, rusqlite::Error> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(drop)
}

struct WriterState {
    conn: Connection,
    db: PathBuf,
    /// This node's name, in every record.
    node: String,
    /// After a rotation whose new file could not be opened yet: its (first_seq, prev_hash).
    /// `write` opens it first, so a failed rotation is a failed write, retried like one.
    pending_file: Option<(u64, [u8; 32], String)>,
    /// The `rotate` record the current file must begin with, until a commit wrote it: it
    /// goes first into the next transaction, whatever else (a `resumed` record) is queued.
    pending_rotate: Option<Record>,
    rotation: Rotation,
    /// (device, inode) of the open file, to notice it being removed or replaced.
    file_id: Option<(u64, u64)>,
    file_first_seq: u64,
    file_started: Instant,
    write_timeout: Duration,
    key: SigningKey,
    head_seq: u64,
    head_hash: [u8; 32],
    checkpointed_seq: u64,
    last_checkpoint: Instant,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    healthy: Arc<AtomicBool>,
    failures: u64,
    /// Probes skipped for want of [`RESUME_HEADROOM`] since the last failure.
    starved_probes: u64,
}

impl WriterState {
    fn open(settings: &WriterSettings) -> Result<WriterState, AuditError> {
        let conn = connect(&settings.db, settings.write_timeout)?;
        let key = SigningKey::from_seed(settings.signing_key.seed_copy());
        let sql = |source| AuditError::Sqlite {
            path: settings.db.clone(),
            source,
        };
        if meta(&conn, "format").map_err(sql)?.is_none() {
            // A new file. If rotated files exist (the live file was lost between a rotation
            // and its successor's first commit), continue their chain instead of forking it.
            match super::head::predecessor(&settings.db, &key.verifying_key())? {
                Some((last_seq, last_hash, name)) => {
                    tracing::warn!(
                        previous_file = %name,
                        next_seq = last_seq + 1,
                        "no live audit file: continuing the chain of the newest rotated file"
                    );
                    init_meta(&conn, last_seq + 1, &last_hash, Some(name.as_str())).map_err(sql)?;
                }
                None => init_meta(&conn, 1, &GENESIS, None).map_err(sql)?,
            }
            set_meta(&conn, "clean", "1").map_err(sql)?;
        }
        // Never sign over a chain that does not extend our own last checkpoint.
        let head = super::head::check(&conn, &key.verifying_key())
            .map_err(sql)?
            .map_err(|refusal| AuditError::Refused {
                path: settings.db.clone(),
                refusal,
            })?;
        let age_ms = meta(&conn, "created_ms")
            .map_err(sql)?
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |created| now_ms().saturating_sub(created).max(0));
        let file_started = Instant::now()
            .checked_sub(Duration::from_millis(age_ms as u64))
            .unwrap_or_else(Instant::now);
        set_meta(&conn, "public_key", &key.public_hex()).map_err(sql)?;
        set_meta(&conn, "clean", "0").map_err(sql)?;
        // A rotation successor whose first commit never happened still owes its `rotate`
        // record: it goes first into the first commit.
        let pending_rotate = (head.is_empty() && head.first_seq > 1).then(|| {
            super::rotate::rotate_record(
                head.previous_file.clone().unwrap_or_default(),
                head.seq,
                &head.hash,
            )
        });
        let checkpointed_seq = head.checkpoint.unwrap_or(head.first_seq - 1);
        let mut state = WriterState {
            conn,
            db: settings.db.clone(),
            node: settings.node.clone(),
            pending_file: None,
            pending_rotate,
            rotation: settings.rotation.clone(),
            file_id: file_id(&settings.db),
            file_first_seq: head.first_seq,
            file_started,
            write_timeout: settings.write_timeout,
            key,
            head_seq: head.seq,
            head_hash: head.hash,
            checkpointed_seq,
            last_checkpoint: Instant::now(),
            checkpoint_every: settings.checkpoint_every.max(1),
            checkpoint_interval: settings.checkpoint_interval,
            healthy: Arc::new(AtomicBool::new(true)),
            failures: 0,
            starved_probes: 0,
        };
        if !head.clean {
            tracing::warn!(
                last_seq = head.seq,
                "the audit log was not closed cleanly (crash or kill -9): appending a recovery record"
            );
            let record = Record::new(Kind::Recovery)
                .with("last_seq", head.seq)
                .with("last_checkpoint_seq", checkpointed_seq)
                .with("unsealed_records", head.unsealed());
            state
                .commit(vec![(record, None)], true)
                .map_err(|e| AuditError::Format(format!("writing the recovery record: {e}")))?;
        }
        Ok(state)
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        let tick = Duration::from_millis(250);
        let mut last_probe = Instant::now();
        // Records in the last batch: whether and how long to look for the next one.
        let mut last_batch = 0;
        loop {
            // After an idle tick there is nothing to look for: sleep at once.
            let spin = match last_batch {
                0 => Duration::ZERO,
                1..=LIGHT_BATCH => SPIN_LIGHT,
                _ => SPIN,
            };
            let first = match next_message(rx, tick, spin) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
            };
            let mut batch = Vec::new();
            let mut seal = false;
            let mut close = None;
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    Msg::Append(record, reply, sealed) => {
                        batch.push((record, reply));
                        seal |= sealed;
                    }
                    Msg::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            last_batch = batch.len();
            // While failing, only this probe (a `resumed` record, once a second, once the
            // filesystem has room again) can bring service back.
            if !self.healthy.load(Ordering::Acquire)
                && last_probe.elapsed() >= Duration::from_secs(1)
            {
                last_probe = Instant::now();
                if self.has_headroom() {
                    let _ = self.commit(Vec::new(), false);
                }
            }
            if !batch.is_empty() {
                if !self.healthy.load(Ordering::Acquire) {
                    // Not tried: on a full disk a small commit can still fit into pages
                    // SQLite already holds, and service would flicker on and off.
                    refuse(
                        batch,
                        "the audit log is failing writes (retried once a second)",
                    );
                } else if self.commit(batch, seal).is_ok() {
                    self.maybe_rotate();
                }
            } else if self.head_seq > self.checkpointed_seq
                && self.last_checkpoint.elapsed() >= self.checkpoint_interval
            {
                let _ = self.commit(Vec::new(), true);
            }
            if let Some(done) = close {
                self.close();
                let _ = done.send(());
                return;
            }
        }
    }

    /// Whether the log's filesystem has [`RESUME_HEADROOM`] free for a failed log to resume
    /// (true where it cannot be measured: the probe's commit decides then).
    fn has_headroom(&mut self) -> bool {
        let dir = match self.db.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let Ok(fs) = rustix::fs::statvfs(dir) else {
            return true;
        };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free >= RESUME_HEADROOM {
            return true;
        }
        self.starved_probes += 1;
        if self.starved_probes % 60 == 1 {
            tracing::warn!(
                free_bytes = free,
                needed_bytes = RESUME_HEADROOM,
                "the audit log's filesystem is still (nearly) full: serving stays refused"
            );
        }
        false
    }

    /// Final checkpoint and the clean flag.
    fn close(&mut self) {
        if self.head_seq > self.checkpointed_seq && self.commit(Vec::new(), true).is_err() {
            return;
        }
        if let Err(e) = set_meta(&self.conn, "clean", "1") {
            tracing::error!(error = %e, "cannot mark the audit log closed");
        }
    }

    /// Writes `batch` (plus a `resumed` record after a failure, plus a checkpoint when one is
    /// due or `force_checkpoint`) in one transaction and answers every caller.
    fn commit(
        &mut self,
        mut batch: Vec<(Record, Option<Reply>)>,
        force_checkpoint: bool,
    ) -> Result<(), String> {
        let recovering = !self.healthy.load(Ordering::Acquire);
        if recovering {
            let record = Record::new(Kind::Resumed).with("failed_commits", self.failures);
            batch.insert(0, (record, None));
        }
        let started = Instant::now();
        let written = self.write(&batch, force_checkpoint);
        // Idle probes (empty batches) write nothing worth timing; they still report health.
        crate::metrics::global().audit_commit(
            (!batch.is_empty()).then(|| started.elapsed()),
            written.as_ref().ok().map(|(seq, hash, _)| (*seq, hash)),
        );
        match written {
            Ok((seq, hash, checkpointed)) => {
                // The batch's records are the transaction's last ones (a pending `rotate`
                // record may precede them).
                let first = seq + 1 - batch.len() as u64;
                self.head_seq = seq;
                self.head_hash = hash;
                if checkpointed {
                    self.checkpointed_seq = seq;
                    self.last_checkpoint = Instant::now();
                }
                if recovering {
                    tracing::warn!(
                        failed_commits = self.failures,
                        "audit log writes succeed again: serving resumes"
                    );
                    self.failures = 0;
                    self.starved_probes = 0;
                    self.healthy.store(true, Ordering::Release);
                }
                for (i, (_, reply)) in batch.into_iter().enumerate() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(first + i as u64));
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                if !recovering || self.failures.is_multiple_of(60) {
                    tracing::error!(
                        error = %e,
                        failed_commits = self.failures,
                        "AUDIT LOG WRITE FAILED: refusing requests (503 audit_unavailable) until writes succeed"
                    );
                }
                self.healthy.store(false, Ordering::Release);
                let message = e.to_string();
                refuse(batch, &message);
                Err(message)
            }
        }
    }

    /// One transaction; returns the new head and whether a checkpoint was written. The
    /// writer's own head only moves after the commit succeeded.
    fn write(
        &mut self,
        batch: &[(Record, Option<Reply>)],
        force_checkpoint: bool,
    ) -> Result<(u64, [u8; 32], bool), AuditError> {
        if let Some((first_seq, prev, previous)) = &self.pending_file {
            let conn = connect(&self.db, self.write_timeout)?;
            init_meta(&conn, *first_seq, prev, Some(previous))?;
            set_meta(&conn, "public_key", &self.key.public_hex())?;
            set_meta(&conn, "clean", "0")?;
            self.conn = conn;
            self.pending_file = None;
            self.file_id = file_id(&self.db);
        }
        // SQLite keeps writing to a file that was deleted or replaced under it, and those
        // records would vanish with the process: that is a failed write too.
        if self.file_id.is_none() || file_id(&self.db) != self.file_id {
            return Err(AuditError::Unavailable(format!(
                "{} was removed or replaced while open",
                self.db.display()
            )));
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut seq = self.head_seq;
        let mut hash = self.head_hash;
        let ts = now_ms();
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO records (seq, body, hash) VALUES (?1, ?2, ?3)")?;
            for record in self
                .pending_rotate
                .iter()
                .chain(batch.iter().map(|(record, _)| record))
            {
                seq += 1;
                let body = record.encode(seq, ts, &self.node);
                hash = chain_hash(seq, &hash, &body);
                insert.execute(params![seq, body, &hash[..]])?;
            }
        }
        // Due when the commit crosses a multiple of `checkpoint_every` (so checkpoints fall
        // on round numbers whatever the file's first commit was), or the interval passed.
        let due = seq / self.checkpoint_every > self.checkpointed_seq / self.checkpoint_every
            || (seq > self.checkpointed_seq
                && self.last_checkpoint.elapsed() >= self.checkpoint_interval);
        // The first commit of a file is sealed: no file is ever without a checkpoint, and
        // `verify` rejects one that is.
        let first_in_file = self.checkpointed_seq < self.file_first_seq;
        let checkpoint = seq > self.checkpointed_seq && (due || force_checkpoint || first_in_file);
        if checkpoint {
            let signature = self.key.sign(&checkpoint_message(seq, &hash, ts));
            tx.prepare_cached(
                "INSERT OR REPLACE INTO checkpoints (seq, hash, ts_ms, signature) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![seq, &hash[..], ts, &signature[..]])?;
        }
        tx.commit()?;
        self.pending_rotate = None;
        Ok((seq, hash, checkpoint))
    }
}

/// The meta rows of a new file continuing the chain at `first_seq` after `prev`.
fn init_meta(
    conn: &Connection,
    first_seq: u64,
    prev: &[u8; 32],
    previous_file: Option<&str>,
) -> Result<(), rusqlite::Error> {
    set_meta(conn, "format", "airlock-audit-v1")?;
    set_meta(conn, "first_seq", &first_seq.to_string())?;
    set_meta(conn, "prev_hash", &hex::encode(prev))?;
    set_meta(conn, "created_ms", &now_ms().to_string())?;
    if let Some(previous) = previous_file {
        set_meta(conn, "previous_file", previous)?;
    }
    Ok(())
}

impl WriterState {
    fn file_bytes(&self) -> u64 {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap_or(0);
        let size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(0);
        u64::try_from(pages.saturating_mul(size)).unwrap_or(0)
    }

    fn maybe_rotate(&mut self) {
        if self.pending_file.is_some() || self.head_seq < self.file_first_seq {
            return;
        }
        let by_size = self
            .rotation
            .max_bytes
            .is_some_and(|max| self.file_bytes() > max);
        let by_age = self
            .rotation
            .max_age
            .is_some_and(|age| self.file_started.elapsed() >= age);
        if !(by_size || by_age) {
            return;
        }
        if let Err(e) = self.rotate() {
            tracing::error!(error = %e, "audit log rotation failed");
        }
    }

    /// Seals the live file, renames it, and continues the chain in a new one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        if self.head_seq > self.checkpointed_seq {
            self.commit(Vec::new(), true)
                .map_err(AuditError::Unavailable)?;
        }
        set_meta(&self.conn, "clean", "1")?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let archived = archived_name(&self.db, self.file_first_seq);
        let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        if let Err((conn, e)) = old.close() {
            self.conn = conn;
            return Err(e.into());
        }
        if let Err(source) = std::fs::rename(&self.db, &archived) {
            // Keep writing to the same file.
            self.conn = connect(&self.db, self.write_timeout)?;
            self.file_id = file_id(&self.db);
            set_meta(&self.conn, "clean", "0")?;
            return Err(AuditError::Io {
                path: archived,
                source,
            });
        }
        let previous = archived.display().to_string();
        tracing::info!(rotated_to = %previous, next_seq = self.head_seq + 1, "audit log rotated");
        self.pending_file = Some((self.head_seq + 1, self.head_hash, previous.clone()));
        self.pending_rotate = Some(super::rotate::rotate_record(
            previous,
            self.head_seq,
            &self.head_hash,
        ));
        self.file_first_seq = self.head_seq + 1;
        self.file_started = Instant::now();
        // Writes the `rotate` record (and seals it: the first commit of the file).
        self.commit(Vec::new(), false)
            .map_err(AuditError::Unavailable)?;
        if let Some(keep) = self.rotation.keep {
            let removed = apply_retention(&self.db, keep);
            if !removed.is_empty() {
                tracing::info!(files = ?removed, "audit retention removed rotated files");
                let record = Record::new(Kind::Retention)
                    .with("removed_files", removed)
                    .with("keep_s", keep.as_secs());
                self.commit(vec![(record, None)], false)
                    .map_err(AuditError::Unavailable)?;
            }
        }
        Ok(())
    }
}

/// (device, inode) of the file at `path`, if there is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Answers every caller in `batch` with [`AuditError::Unavailable`].
fn refuse(batch: Vec<(Record, Option<Reply>)>, message: &str) {
    for (_, reply) in batch {
        if let Some(reply) = reply {
            let _ = reply.send(Err(AuditError::Unavailable(message.to_owned())));
        }
    }
}

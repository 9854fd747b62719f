//! Invalid-token deletion in PostgreSQL (DESIGN.md §6).
//!
//! The pipeline calls [`TokenQueue::submit`] for each token APNs/FCM call dead; it returns a
//! [`DeletionTicket`] once the token is in the deleter's bounded queue (a full queue makes
//! callers wait: backpressure, never unbounded memory). The ticket resolves when the token's
//! DELETE has committed in PostgreSQL: only then may the message's offset be committed, so a
//! crash never loses a deletion. One background task batches tokens by size and time into
//! `DELETE FROM "<app>_<platform>" WHERE token = ANY(...) RETURNING token`, one statement per
//! table per batch, and acknowledges the whole batch at once.
//! While PostgreSQL is unreachable the batch is kept and retried with back-off (nothing is lost,
//! and the queue fills up behind it); on shutdown what is queued is flushed. Tokens at most
//! awaiting their DELETE: `queue_capacity` plus one batch.
//!
//! Fixes over the seed (anchors §1.7): no 100 ms sleep per token, the table name is validated
//! and quoted, and failed deletes are retried instead of dropped.

use crate::config::PgConfig;
use crate::push::Platform;
use crate::sender::retry::RetryPolicy;
use deadpool_postgres::{Pool, Runtime};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("app {app:?}: not a valid table name prefix (allowed: letters, digits, '_' and '-')")]
    InvalidTableName { app: String },
    #[error("the token deleter has stopped")]
    Stopped,
    #[error("token delete from {table:?} failed permanently: {message}")]
    Permanent { table: String, message: String },
    #[error("invalidToken.pg: cannot build a connection pool: {0}")]
    Pool(String),
}

/// How the deleter batches and retries.
#[derive(Debug, Clone)]
pub struct DeleterSettings {
    /// Tokens per batch: a batch is flushed as soon as it holds this many.
    pub batch_size: usize,
    /// A non-empty batch is flushed at least this often.
    pub flush_interval: Duration,
    /// Tokens that may wait in the queue before `submit` blocks (besides the batch being
    /// written): with the batch, the most tokens awaiting their DELETE at once.
    pub queue_capacity: usize,
    /// First and longest wait between retries while PostgreSQL fails.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for DeleterSettings {
    fn default() -> Self {
        DeleterSettings {
            batch_size: 1000,
            flush_interval: Duration::from_millis(250),
            queue_capacity: 10_000,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl DeleterSettings {
    /// Batch size and interval from `invalidToken.batch`; queue and retry timings as default.
    /// (A batch is retried until it is deleted or the shutdown deadline passes, so a
    /// PostgreSQL outage loses nothing: the seed's `invalidToken.pg.maxRetries` is ignored.)
    pub fn from_config(cfg: &crate::config::InvalidTokenConfig) -> Self {
        let size = cfg.batch.size.max(1);
        DeleterSettings {
            batch_size: size,
            flush_interval: cfg.batch.interval.max(Duration::from_millis(1)),
            queue_capacity: size.saturating_mul(10),
            ..DeleterSettings::default()
        }
    }
}

/// Counters, shared with the stats reporters (seed names: `tokens_delete_*`).
#[derive(Debug, Default)]
struct Counters {
    success: AtomicU64,
    nonexistent: AtomicU64,
    error: AtomicU64,
    invalid_table: AtomicU64,
    dropped: AtomicU64,
}

/// A snapshot of the deleter's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TokenStats {
    /// Rows deleted (`tokens_delete_success`).
    pub success: u64,
    /// Tokens that had no row (`tokens_delete_nonexistent`).
    pub nonexistent: u64,
    /// Failed DELETE attempts (`tokens_delete_error`); a failed attempt's batch is retried.
    pub error: u64,
    /// Enqueues refused because the app name is not a safe table name.
    pub invalid_table: u64,
    /// Tokens given up: a permanent database error (e.g. no such table), or still undeleted when
    /// the shutdown deadline passed.
    pub dropped: u64,
}

impl Counters {
    fn snapshot(&self) -> TokenStats {
        TokenStats {
            success: self.success.load(Ordering::Relaxed),
            nonexistent: self.nonexistent.load(Ordering::Relaxed),
            error: self.error.load(Ordering::Relaxed),
            invalid_table: self.invalid_table.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// One token to delete, with its validated table name and who waits for the commit.
#[derive(Debug)]
struct Deletion {
    table: String,
    token: String,
    ack: oneshot::Sender<Result<(), TokenError>>,
}

/// Resolves when a submitted token's DELETE has committed.
#[derive(Debug)]
pub struct DeletionTicket {
    rx: oneshot::Receiver<Result<(), TokenError>>,
}

impl DeletionTicket {
    /// `Ok` once the DELETE committed (the token may have had no row). `Permanent`: the
    /// database refused it for good (e.g. no such table); retrying cannot help. `Stopped`: the
    /// deleter gave up at its shutdown deadline, the token is not deleted.
    pub async fn committed(self) -> Result<(), TokenError> {
        self.rx.await.unwrap_or(Err(TokenError::Stopped))
    }
}

/// Builds the PostgreSQL pool from `invalidToken.pg` (no TLS, as the seed's default).
///
/// No statement may wait without end: a lock held by someone else's open transaction, or a
/// database that stopped answering, would otherwise hold a router's batch (and its group's
/// rebalances), an API request or a token deletion until it ends, with nothing reported.
/// Each new connection sets `statement_timeout` (PostgreSQL cancels a statement that runs or
/// waits longer) and `idle_in_transaction_session_timeout` (a process of ours stopped
/// mid-transaction holds no locks past it); with `SET`s, not the startup packet's `options`,
/// which PgBouncer refuses by default. The kernel closes a connection whose sent data goes
/// unacknowledged as long (`TCP_USER_TIMEOUT`, at least 10 s: retransmissions take seconds),
/// and keepalives find an idle one whose peer is gone (a failover). Each is an ordinary
/// PostgreSQL failure then: retried, shown on `/healthz`.
pub fn pg_pool(pg: &PgConfig) -> Result<Pool, TokenError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&pg.host)
        .port(pg.port)
        .user(&pg.user)
        .dbname(&pg.database)
        .connect_timeout(pg.connection_timeout.max(Duration::from_millis(1)))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    if let Some(pass) = &pg.pass {
        cfg.password(pass.expose());
    }
    if !pg.statement_timeout.is_zero() {
        cfg.tcp_user_timeout(pg.statement_timeout.max(Duration::from_secs(10)));
    }
    let manager = deadpool_postgres::Manager::from_config(
        cfg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig::default(),
    );
    let mut pool = Pool::builder(manager)
        .max_size(pg.pool_size.max(1))
        .runtime(Runtime::Tokio1);
    if !pg.statement_timeout.is_zero() {
        // Waiting for a free connection is bounded like a statement: every connection held
        // that long means something is stuck, and the caller reports it instead of waiting.
        pool = pool.wait_timeout(Some(pg.statement_timeout));
        let ms = pg.statement_timeout.as_millis().max(1);
        let set: Arc<str> =
            format!("SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}")
                .into();
        pool = pool.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let set = set.clone();
            Box::pin(async move {
                client
                    .batch_execute(&set)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }));
    }
    pool.build()
        // The error text holds no password: deadpool reports only what went wrong.
        .map_err(|e| TokenError::Pool(e.to_string()))
}

/// The table holding an app's tokens for a platform, validated so it can be quoted safely.
pub fn table_name(app: &str, platform: Platform) -> Result<String, TokenError> {
    crate::push::app::table_name(app, platform).ok_or_else(|| TokenError::InvalidTableName {
        app: app.to_owned(),
    })
}

/// The statement for one table. The name was validated by [`table_name`]; it is quoted as well,
/// so '-' works and a validation bug still cannot become SQL. The array is fenced (computed
/// before the scan): seen as a parameter, 1,000 tokens made a table without fresh statistics
/// look cheaper to scan whole than to look up in its token index (34-57 ms against 12-20 ms a
/// batch at 200,000 rows, 2026-12-06).
fn delete_sql(table: &str) -> String {
    format!(
        "DELETE FROM \"{}\" WHERE token = ANY((SELECT $1::text[])::text[]) RETURNING token",
        table.replace('"', "\"\"")
    )
}

/// A cloneable handle for enqueueing tokens.
#[derive(Debug, Clone)]
pub struct TokenQueue {
    tx: mpsc::Sender<Deletion>,
    counters: Arc<Counters>,
}

impl TokenQueue {
    /// Queues `token` for deletion from `"<app>_<platform>"`; returns once it is queued (waits
    /// while the queue is full) with a ticket for the commit. An unsafe app name is refused,
    /// counted and never reaches SQL.
    pub async fn submit(
        &self,
        app: &str,
        platform: Platform,
        token: &str,
    ) -> Result<DeletionTicket, TokenError> {
        let table = table_name(app, platform).inspect_err(|_| {
            self.counters.invalid_table.fetch_add(1, Ordering::Relaxed);
        })?;
        let (ack, rx) = oneshot::channel();
        if token.contains('\0') {
            // No text column can hold a NUL, so no row has this token; sent on, PostgreSQL
            // would refuse its whole batch (SQLSTATE 22021) and the other tokens with it.
            self.counters.nonexistent.fetch_add(1, Ordering::Relaxed);
            let _ = ack.send(Ok(()));
            return Ok(DeletionTicket { rx });
        }
        self.tx
            .send(Deletion {
                table,
                token: token.to_owned(),
                ack,
            })
            .await
            .map_err(|_| TokenError::Stopped)?;
        Ok(DeletionTicket { rx })
    }

    /// Submits `token` and waits until its DELETE has committed.
    pub async fn delete(
        &self,
        app: &str,
        platform: Platform,
        token: &str,
    ) -> Result<(), TokenError> {
        self.submit(app, platform, token).await?.committed().await
    }

    pub fn stats(&self) -> TokenStats {
        self.counters.snapshot()
    }
}

/// The running deleter: a queue handle plus its background task.
#[derive(Debug)]
pub struct TokenDeleter {
    queue: TokenQueue,
    task: JoinHandle<()>,
    abandon: CancellationToken,
}

impl TokenDeleter {
    /// Starts the background task on the current tokio runtime.
    pub fn spawn(pool: Pool, settings: DeleterSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let abandon = CancellationToken::new();
        let worker = Worker {
            pool,
            settings,
            counters: counters.clone(),
            abandon: abandon.clone(),
        };
        let task = tokio::spawn(worker.run(rx));
        TokenDeleter {
            queue: TokenQueue { tx, counters },
            task,
            abandon,
        }
    }

    pub fn queue(&self) -> TokenQueue {
        self.queue.clone()
    }

    pub fn stats(&self) -> TokenStats {
        self.queue.stats()
    }

    /// Stops taking tokens, flushes what is queued, and returns the final counters. If
    /// PostgreSQL is still failing at `deadline`, the rest is given up and counted as dropped.
    /// Other clones of the queue should be dropped first: a clone still held at the deadline
    /// no longer keeps the worker, but what it would submit is refused (`Stopped`).
    pub async fn shutdown(self, deadline: Duration) -> TokenStats {
        let TokenDeleter {
            queue,
            mut task,
            abandon,
        } = self;
        let counters = queue.counters.clone();
        drop(queue);
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            abandon.cancel();
            let _ = task.await;
        }
        counters.snapshot()
    }
}

/// Pending tokens, grouped by table (a token queued twice is deleted once), with whoever waits:
/// a table's statement succeeds or fails as a whole, so its waiters need no per-token map.
#[derive(Debug, Default)]
struct Batch {
    by_table: BTreeMap<String, TableBatch>,
    len: usize,
}

#[derive(Debug, Default)]
struct TableBatch {
    tokens: BTreeSet<String>,
    acks: Vec<Ack>,
}

type Ack = oneshot::Sender<Result<(), TokenError>>;

impl Batch {
    fn add(&mut self, d: Deletion) {
        let table = self.by_table.entry(d.table).or_default();
        if table.tokens.insert(d.token) {
            self.len += 1;
        }
        table.acks.push(d.ack);
    }
}

struct Worker {
    pool: Pool,
    settings: DeleterSettings,
    counters: Arc<Counters>,
    abandon: CancellationToken,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Deletion>) {
        let mut batch = Batch::default();
        let mut ticker = tokio::time::interval(self.settings.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(d) => {
                        batch.add(d);
                        if batch.len >= self.settings.batch_size {
                            self.flush(std::mem::take(&mut batch)).await;
                        }
                    }
                    None => {
                        self.flush(batch).await;
                        return;
                    }
                },
                _ = ticker.tick() => {
                    if batch.len > 0 {
                        self.flush(std::mem::take(&mut batch)).await;
                    }
                }
                // Past the shutdown deadline with a queue clone still held (a message task
                // waiting at a failing endpoint): what is batched is dropped, as a failing
                // DELETE's would be, and the worker ends instead of waiting for the clone.
                _ = self.abandon.cancelled() => {
                    // With what is still queued: nobody will delete those either.
                    rx.close();
                    while let Ok(d) = rx.try_recv() {
                        batch.add(d);
                    }
                    if batch.len > 0 {
                        tracing::error!(tokens = batch.len, "shutdown deadline passed; undeleted tokens dropped");
                        self.counters.dropped.fetch_add(batch.len as u64, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }

    async fn flush(&self, batch: Batch) {
        for (table, TableBatch { tokens, acks }) in batch.by_table {
            let tokens: Vec<String> = tokens.into_iter().collect();
            let result = match self.delete_until_done(&table, &tokens).await {
                Done::Committed => Ok(()),
                Done::Permanent(message) => Err(TokenError::Permanent {
                    table: table.clone(),
                    message,
                }),
                // Dropping the acks tells the waiters the tokens were not deleted.
                Done::Abandoned => continue,
            };
            for ack in acks {
                // A waiter that went away (its message was abandoned) needs no answer.
                let _ = ack.send(result.clone());
            }
        }
    }

    /// Deletes one table's tokens, retrying transient failures with back-off until it works or
    /// the shutdown deadline abandons it.
    async fn delete_until_done(&self, table: &str, tokens: &[String]) -> Done {
        let count = tokens.len() as u64;
        let policy = RetryPolicy::unbounded(self.settings.retry_initial, self.settings.retry_max);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let wait = policy.delay(attempt, None, &mut rand::rng());
            match self.delete_once(table, tokens).await {
                Ok(Deleted { rows, tokens_found }) => {
                    self.counters.success.fetch_add(rows, Ordering::Relaxed);
                    self.counters
                        .nonexistent
                        .fetch_add(count.saturating_sub(tokens_found), Ordering::Relaxed);
                    return Done::Committed;
                }
                Err(failure) => {
                    self.counters.error.fetch_add(1, Ordering::Relaxed);
                    if !failure.transient {
                        tracing::error!(table, tokens = count, error = %failure.message, "token delete failed permanently; batch dropped");
                        self.counters.dropped.fetch_add(count, Ordering::Relaxed);
                        return Done::Permanent(failure.message);
                    }
                    tracing::warn!(table, tokens = count, error = %failure.message, retry_in = ?wait, "token delete failed; will retry");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.abandon.cancelled() => {
                    tracing::error!(table, tokens = count, "shutdown deadline passed; undeleted tokens dropped");
                    self.counters.dropped.fetch_add(count, Ordering::Relaxed);
                    return Done::Abandoned;
                }
            }
        }
    }

    async fn delete_once(&self, table: &str, tokens: &[String]) -> Result<Deleted, Failure> {
        let client = self.pool.get().await.map_err(|e| Failure {
            transient: true,
            message: e.to_string(),
        })?;
        let statement = client
            .prepare_cached(&delete_sql(table))
            .await
            .map_err(Failure::from)?;
        let deleted = client
            .query(&statement, &[&tokens])
            .await
            .map_err(Failure::from)?;
        let found: BTreeSet<&str> = deleted.iter().map(|row| row.get::<_, &str>(0)).collect();
        Ok(Deleted {
            rows: deleted.len() as u64,
            tokens_found: found.len() as u64,
        })
    }
}

/// How a table's batch ended.
enum Done {
    Committed,
    Permanent(String),
    Abandoned,
}

/// What one DELETE removed. Several users may share a token (seed comment), so rows and
/// distinct tokens differ; "nonexistent" counts tokens that had no row at all.
struct Deleted {
    rows: u64,
    tokens_found: u64,
}

/// Why one DELETE failed, and whether trying again can help.
struct Failure {
    transient: bool,
    message: String,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        // A server-side error (no such table, bad permissions) will fail again; only connection
        // trouble (no SQLSTATE) and the SQLSTATE classes for "connection exception",
        // "insufficient resources", "operator intervention", "transaction rollback", "invalid
        // transaction state" (a read-only standby after a failover), "object not in
        // prerequisite state" (a lock not available) and "system error" (I/O) are worth
        // retrying.
        let transient = match e.as_db_error() {
            None => true,
            Some(db) => matches!(
                &db.code().code()[..2],
                "08" | "53" | "57" | "40" | "25" | "55" | "58"
            ),
        };
        Failure {
            transient,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated() {
        assert_eq!(table_name("game", Platform::Apns).unwrap(), "game_apns");
        assert_eq!(
            table_name("my-game_2", Platform::Gcm).unwrap(),
            "my-game_2_gcm"
        );
        for bad in ["", "a\"b", "x; DROP TABLE t", "a b", "é", "a.b"] {
            assert!(
                matches!(
                    table_name(bad, Platform::Apns),
                    Err(TokenError::InvalidTableName { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn sql_quotes_the_table() {
        assert_eq!(
            delete_sql("my-game_apns"),
            r#"DELETE FROM "my-game_apns" WHERE token = ANY((SELECT $1::text[])::text[]) RETURNING token"#
        );
    }
}

//! Invalid-token deletion in PostgreSQL (DESIGN.md §6).
//!
//! The pipeline calls [`TokenQueue::submit`] for each token APNs/FCM call dead; it returns a
//! [`DeletionTicket`] once the deleter has room for it. The ticket resolves when the token's
//! DELETE has committed in PostgreSQL: only then may the message's offset be committed, so a
//! crash never loses a deletion. One background task batches tokens per table by size and
//! time into `DELETE FROM "<app>_<platform>" WHERE token = ANY(...) RETURNING token`, at most
//! one statement per table at a time, the tables side by side.
//!
//! Each table waits on its own: while one table's DELETE fails (PostgreSQL down, a lock held
//! by someone else past `statement_timeout`, no such table) its tokens are kept and retried
//! with back-off, `/healthz` names it, and the other tables' tokens go on. Room is counted
//! per table (`queue_capacity` plus one batch): a table that is full makes only its own
//! submitters wait (backpressure, never unbounded memory). A statement cancelled by the
//! statement timeout is retried with half as many tokens (down to one), and back to the full
//! batch as statements succeed. A batch PostgreSQL refuses for a token's sake (a data error, a
//! trigger's exception) is split in halves until the token refused on its own is found: that
//! token alone is dropped (its ticket says `Permanent`), the others are deleted. Any other
//! refusal (no such table, no grant) is the configuration's fault, not the message's: kept and
//! retried like an outage. On shutdown what is queued is flushed, until the deadline.
//!
//! Counts: `TokenStats` for the process, and per table `pusher_tokens_delete_total` in
//! Prometheus and the seed's `tokens_delete_*` StatsD counters.
//!
//! Fixes over the seed (anchors §1.7): no 100 ms sleep per token, the table name is validated
//! and quoted, and failed deletes are retried instead of dropped.

use crate::config::PgConfig;
use crate::push::Platform;
use crate::sender::retry::RetryPolicy;
use crate::telemetry::{health, names, StatsdBatch, Throttle};
use deadpool_postgres::{Pool, Runtime};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("app {app:?}: not a valid table name prefix (allowed: letters, digits, '_' and '-')")]
    InvalidTableName { app: String },
    #[error("the token deleter has stopped")]
    Stopped,
    /// PostgreSQL refused this token's DELETE on its own (a data error, a trigger's exception).
    #[error("token delete from {table:?} refused for this token: {message}")]
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
    /// Tokens of one table that may wait before `submit` for that table blocks (besides one
    /// batch being written): with the batch, the most tokens of a table awaiting their DELETE
    /// at once. Each table has its own, so a table whose DELETE fails holds up only its app.
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
    /// PostgreSQL outage or a missing table loses nothing: the seed's
    /// `invalidToken.pg.maxRetries` is ignored. Only a token PostgreSQL refuses on its own is
    /// dropped.)
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
    /// Failed DELETE statements (`tokens_delete_error`); their tokens are retried, or split
    /// to find the one PostgreSQL refuses.
    pub error: u64,
    /// Enqueues refused because the app name is not a safe table name.
    pub invalid_table: u64,
    /// Tokens given up: refused by PostgreSQL on their own (a data error, a trigger), or still
    /// undeleted when the shutdown deadline passed.
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

/// One token to delete, with its validated table name (and the app and platform it is named
/// after, for the metrics) and who waits for the commit.
#[derive(Debug)]
struct Deletion {
    table: String,
    app: String,
    platform: Platform,
    token: String,
    waiter: Waiter,
}

/// Who waits for a token's DELETE, and the room in its table it holds until answered.
#[derive(Debug)]
struct Waiter {
    ack: Ack,
    _room: OwnedSemaphorePermit,
}

/// Resolves when a submitted token's DELETE has committed.
#[derive(Debug)]
pub struct DeletionTicket {
    rx: oneshot::Receiver<Result<(), TokenError>>,
}

impl DeletionTicket {
    /// `Ok` once the DELETE committed (the token may have had no row). `Permanent`: the
    /// database refused this token's DELETE on its own (a data error, a trigger); retrying
    /// cannot help. `Stopped`: the deleter gave up at its shutdown deadline, the token is not
    /// deleted. (A DELETE failing for every token, as with no such table, is retried: the
    /// ticket waits.)
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
/// PostgreSQL failure then: retried, shown on `/healthz` (the deleter's component is
/// `postgres tokens <table>`).
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
        // So is making one: `connect_timeout` covers only the TCP connect, and a server that
        // accepts and never answers the startup held the caller without end.
        pool = pool
            .wait_timeout(Some(pg.statement_timeout))
            .create_timeout(Some(pg.statement_timeout.max(pg.connection_timeout)));
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
    // Unbounded, yet bounded: every queued token holds a permit of its table's room.
    tx: mpsc::UnboundedSender<Deletion>,
    counters: Arc<Counters>,
    room: Arc<Room>,
}

/// Each table's room: `queue_capacity` plus one batch of tokens awaiting their DELETE. Tables
/// are few (one per configured app), made on first use and kept.
#[derive(Debug)]
struct Room {
    per_table: usize,
    tables: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Room {
    fn of(&self, table: &str) -> Arc<Semaphore> {
        let mut tables = self.tables.lock();
        if let Some(room) = tables.get(table) {
            return room.clone();
        }
        tables
            .entry(table.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_table)))
            .clone()
    }
}

impl TokenQueue {
    /// Queues `token` for deletion from `"<app>_<platform>"`; returns once it is queued (waits
    /// while that table's room is full: other tables are not held up) with a ticket for the
    /// commit. An unsafe app name is refused, counted and never reaches SQL.
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
            // would refuse its statement (SQLSTATE 22021) and cost a split of its batch.
            self.counters.nonexistent.fetch_add(1, Ordering::Relaxed);
            let _ = ack.send(Ok(()));
            return Ok(DeletionTicket { rx });
        }
        if self.tx.is_closed() {
            return Err(TokenError::Stopped);
        }
        let room = self
            .room
            .of(&table)
            .acquire_owned()
            .await
            .map_err(|_| TokenError::Stopped)?;
        self.tx
            .send(Deletion {
                table,
                app: app.to_owned(),
                platform,
                token: token.to_owned(),
                waiter: Waiter { ack, _room: room },
            })
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
        TokenDeleter::spawn_reporting(pool, settings, None)
    }

    /// As [`TokenDeleter::spawn`], also sending the seed's `tokens_delete_*` counters to
    /// StatsD.
    pub fn spawn_reporting(
        pool: Pool,
        settings: DeleterSettings,
        statsd: Option<Arc<StatsdBatch>>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let abandon = CancellationToken::new();
        let room = Arc::new(Room {
            per_table: settings
                .queue_capacity
                .saturating_add(settings.batch_size)
                .clamp(1, Semaphore::MAX_PERMITS),
            tables: Mutex::default(),
        });
        let worker = Worker {
            pool,
            settings,
            counters: counters.clone(),
            abandon: abandon.clone(),
            statsd,
            reports: Throttle::new(REPORT_EVERY),
        };
        let task = tokio::spawn(worker.run(rx));
        TokenDeleter {
            queue: TokenQueue { tx, counters, room },
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
    /// PostgreSQL is still failing at `deadline`, the rest is given up and counted as dropped
    /// (a statement still running is abandoned too: shutdown ends at the deadline).
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

/// A failing table is logged (and so reaches Sentry) at most this often, with the count held
/// back: each retry, every few seconds per table, would be an event.
const REPORT_EVERY: Duration = Duration::from_secs(60);

type Ack = oneshot::Sender<Result<(), TokenError>>;

/// One table's tokens and how its DELETEs fare.
struct Table {
    app: String,
    platform: Platform,
    /// Not yet in a statement, with whoever waits (a token queued twice is deleted once).
    waiting: BTreeMap<String, Vec<Waiter>>,
    /// Taken into a statement: the one running, or groups waiting for their next attempt.
    taken: BTreeMap<String, Vec<Waiter>>,
    /// Taken tokens to try next, the last first (a failed statement's, or the halves of a
    /// batch PostgreSQL refused for one of its tokens).
    groups: Vec<Vec<String>>,
    /// A statement is running (one at a time per table).
    busy: bool,
    /// Failed statements in a row, for the back-off; when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
    /// Tokens per statement: halved by a statement timeout, doubled back by successes.
    limit: usize,
    /// Its `/healthz` problem is set.
    unhealthy: bool,
    metrics: TableMetrics,
}

/// A table's `pusher_tokens_delete_total` handles, made once (with the recorder installed
/// before the first token, as `pusher run` does).
struct TableMetrics {
    success: metrics::Counter,
    nonexistent: metrics::Counter,
    error: metrics::Counter,
    dropped: metrics::Counter,
}

impl TableMetrics {
    fn new(app: &str, platform: Platform) -> Self {
        let counter = |result: &'static str| {
            metrics::counter!(names::TOKENS_DELETE, "platform" => platform.as_str(),
                "game" => app.to_owned(), "result" => result)
        };
        TableMetrics {
            success: counter("success"),
            nonexistent: counter("nonexistent"),
            error: counter("error"),
            dropped: counter("dropped"),
        }
    }
}

impl Table {
    fn new(app: String, platform: Platform, limit: usize) -> Self {
        let metrics = TableMetrics::new(&app, platform);
        Table {
            app,
            platform,
            waiting: BTreeMap::new(),
            taken: BTreeMap::new(),
            groups: Vec::new(),
            busy: false,
            failures: 0,
            retry_at: None,
            limit,
            unhealthy: false,
            metrics,
        }
    }

    /// Distinct tokens not yet deleted.
    fn pending(&self) -> usize {
        self.waiting.len() + self.taken.len()
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| at > now)
    }

    /// The tokens of the next statement, if one should start now. `flush`: start with fewer
    /// than a full batch waiting (the timer, the shutdown).
    fn next_statement(&mut self, flush: bool, now: Instant) -> Option<Vec<String>> {
        if self.busy || self.backing_off(now) {
            return None;
        }
        self.retry_at = None;
        let limit = self.limit.max(1);
        if let Some(mut group) = self.groups.pop() {
            if group.len() > limit {
                self.groups.push(group.split_off(limit));
            }
            return Some(group);
        }
        if self.waiting.is_empty() || (!flush && self.waiting.len() < limit) {
            return None;
        }
        let mut group = Vec::with_capacity(limit.min(self.waiting.len()));
        while group.len() < limit {
            let Some((token, waiters)) = self.waiting.pop_first() else {
                break;
            };
            match self.taken.get_mut(&token) {
                // Queued again while an earlier copy waits for its retry: that statement,
                // still to run, deletes it for both.
                Some(earlier) => earlier.extend(waiters),
                None => {
                    self.taken.insert(token.clone(), waiters);
                    group.push(token);
                }
            }
        }
        (!group.is_empty()).then_some(group)
    }

    /// Answers the waiters of `tokens` (taken), releasing their room.
    fn answer(&mut self, tokens: &[String], result: &Result<(), TokenError>) {
        for token in tokens {
            for waiter in self.taken.remove(token).unwrap_or_default() {
                // A waiter that went away (its message was abandoned) needs no answer.
                let _ = waiter.ack.send(result.clone());
            }
        }
    }
}

/// What one statement task returns.
type Finished = (String, Vec<String>, Result<Deleted, Failure>);

struct Worker {
    pool: Pool,
    settings: DeleterSettings,
    counters: Arc<Counters>,
    abandon: CancellationToken,
    statsd: Option<Arc<StatsdBatch>>,
    reports: Throttle,
}

impl Worker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Deletion>) {
        let mut tables: BTreeMap<String, Table> = BTreeMap::new();
        let mut running: JoinSet<Finished> = JoinSet::new();
        let mut ticker = tokio::time::interval(self.settings.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            let next_retry = tables
                .values()
                .filter(|t| !t.busy)
                .filter_map(|t| t.retry_at)
                .min();
            // Biased: the deadline first, then what frees room; the timers before the queue,
            // so a steady stream of tokens never keeps a table's retry waiting.
            tokio::select! {
                biased;
                // Past the shutdown deadline (a message task waiting at a failing endpoint may
                // still hold a queue clone): what is pending is dropped, a statement still
                // running is abandoned, and the worker ends.
                _ = self.abandon.cancelled() => {
                    rx.close();
                    while let Ok(d) = rx.try_recv() {
                        self.add(&mut tables, d);
                    }
                    let dropped: usize = tables.values().map(Table::pending).sum();
                    if dropped > 0 {
                        tracing::error!(tokens = dropped, "shutdown deadline passed; undeleted tokens dropped");
                        self.counters.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
                        for t in tables.values() {
                            self.count(t, Counted::Dropped, t.pending() as u64);
                        }
                    }
                    break;
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    // A statement task does not panic; one that did leaves its table busy,
                    // its tokens undeleted until the shutdown deadline.
                    if let Ok((table, tokens, result)) = done {
                        if let Some(t) = tables.get_mut(&table) {
                            self.finished(&table, t, tokens, result);
                            self.start(&table, t, &mut running, false);
                        }
                    }
                }
                _ = sleep_until(next_retry), if next_retry.is_some() => {
                    let now = Instant::now();
                    for (name, t) in &mut tables {
                        if t.retry_at.is_some_and(|at| at <= now) {
                            self.start(name, t, &mut running, true);
                        }
                    }
                }
                _ = ticker.tick() => {
                    for (name, t) in &mut tables {
                        self.start(name, t, &mut running, true);
                    }
                }
                next = rx.recv(), if open => match next {
                    Some(d) => {
                        let name = d.table.clone();
                        self.add(&mut tables, d);
                        if let Some(t) = tables.get_mut(&name) {
                            self.start(&name, t, &mut running, false);
                        }
                    }
                    None => open = false,
                },
            }
            if !open {
                // Every queue handle is gone: flush what is left, then end.
                for (name, t) in &mut tables {
                    self.start(name, t, &mut running, true);
                }
                if running.is_empty() && tables.values().all(|t| t.pending() == 0) {
                    break;
                }
            }
        }
        // The deleter is gone: its problems are no longer current.
        for (name, t) in &tables {
            if t.unhealthy {
                health::set(&component(name), None);
            }
        }
    }

    fn add(&self, tables: &mut BTreeMap<String, Table>, d: Deletion) {
        let limit = self.settings.batch_size.max(1);
        let t = tables
            .entry(d.table)
            .or_insert_with(|| Table::new(d.app, d.platform, limit));
        t.waiting.entry(d.token).or_default().push(d.waiter);
    }

    /// Starts the table's next statement, if it has one due.
    fn start(&self, name: &str, t: &mut Table, running: &mut JoinSet<Finished>, flush: bool) {
        let Some(tokens) = t.next_statement(flush, Instant::now()) else {
            return;
        };
        t.busy = true;
        let pool = self.pool.clone();
        let table = name.to_owned();
        running.spawn(async move {
            let result = delete_once(&pool, &table, &tokens).await;
            (table, tokens, result)
        });
    }

    /// Acts on a statement's result: answers, splits, or keeps its tokens for a retry.
    fn finished(
        &self,
        name: &str,
        t: &mut Table,
        tokens: Vec<String>,
        result: Result<Deleted, Failure>,
    ) {
        t.busy = false;
        let failure = match result {
            Ok(Deleted { rows, tokens_found }) => {
                let missing = (tokens.len() as u64).saturating_sub(tokens_found);
                self.counters.success.fetch_add(rows, Ordering::Relaxed);
                self.counters
                    .nonexistent
                    .fetch_add(missing, Ordering::Relaxed);
                self.count(t, Counted::Success, rows);
                self.count(t, Counted::Nonexistent, missing);
                t.answer(&tokens, &Ok(()));
                t.failures = 0;
                t.limit = t
                    .limit
                    .saturating_mul(2)
                    .min(self.settings.batch_size.max(1));
                if t.unhealthy {
                    t.unhealthy = false;
                    health::set(&component(name), None);
                    tracing::info!(table = name, "Token deletes commit again.");
                }
                return;
            }
            Err(failure) => failure,
        };
        self.counters.error.fetch_add(1, Ordering::Relaxed);
        self.count(t, Counted::Error, 1);
        match failure.kind {
            // One of these tokens makes PostgreSQL refuse the statement: halves, until the
            // one refused on its own is found, at once (no back-off: the others are fine).
            Fault::Token if tokens.len() > 1 => {
                let mut first = tokens;
                let second = first.split_off(first.len() / 2);
                t.groups.push(second);
                t.groups.push(first);
            }
            Fault::Token => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.count(t, Counted::Dropped, 1);
                if let Some(held_back) = self.reports.allow(&format!("{name} token")) {
                    tracing::error!(table = name, error = %failure.message, held_back, "Token refused by PostgreSQL on its own; dropped.");
                }
                t.answer(
                    &tokens,
                    &Err(TokenError::Permanent {
                        table: name.to_owned(),
                        message: failure.message,
                    }),
                );
                // Nothing left waiting: an earlier outage's problem is not current.
                if t.unhealthy && t.pending() == 0 {
                    t.unhealthy = false;
                    health::set(&component(name), None);
                }
            }
            // Not the message's fault: kept and retried with back-off, shown on /healthz;
            // only this table waits.
            Fault::Transient | Fault::Table => {
                if failure.timed_out {
                    t.limit = (t.limit / 2).max(1);
                }
                t.groups.push(tokens);
                t.failures = t.failures.saturating_add(1);
                let policy =
                    RetryPolicy::unbounded(self.settings.retry_initial, self.settings.retry_max);
                let wait = policy.delay(t.failures, None, &mut rand::rng());
                t.retry_at = Some(Instant::now() + wait);
                t.unhealthy = true;
                health::set(
                    &component(name),
                    Some(format!(
                        "{} token(s) waiting for their DELETE: {}",
                        t.pending(),
                        failure.message
                    )),
                );
                let key = format!("{name} {:?}", failure.kind);
                if let Some(held_back) = self.reports.allow(&key) {
                    let pending = t.pending();
                    if failure.kind == Fault::Table {
                        tracing::error!(table = name, tokens = pending, error = %failure.message, retry_in = ?wait, held_back, "Token delete refused; kept and retried (check the table and its grants).");
                    } else {
                        tracing::warn!(table = name, tokens = pending, error = %failure.message, retry_in = ?wait, held_back, "Token delete failed; kept and retried.");
                    }
                }
            }
        }
    }

    /// Adds `n` to the table's `result` counter: Prometheus, and StatsD with the seed's names.
    fn count(&self, t: &Table, result: Counted, n: u64) {
        if n == 0 {
            return;
        }
        let (counter, statsd_name) = match result {
            Counted::Success => (&t.metrics.success, names::STATSD_TOKENS_DELETE_SUCCESS),
            Counted::Nonexistent => (
                &t.metrics.nonexistent,
                names::STATSD_TOKENS_DELETE_NONEXISTENT,
            ),
            Counted::Error => (&t.metrics.error, names::STATSD_TOKENS_DELETE_ERROR),
            Counted::Dropped => (&t.metrics.dropped, names::STATSD_TOKENS_DELETE_DROPPED),
        };
        counter.increment(n);
        if let Some(statsd) = &self.statsd {
            let tags = vec![
                ("platform", t.platform.as_str().to_owned()),
                ("game", t.app.clone()),
            ];
            statsd.add(statsd_name, tags, n);
        }
    }
}

/// What a table's counters count (the seed's `tokens_delete_<result>`).
#[derive(Clone, Copy)]
enum Counted {
    /// Rows deleted.
    Success,
    /// Tokens that had no row.
    Nonexistent,
    /// Failed statements.
    Error,
    /// Tokens given up.
    Dropped,
}

/// A table's `/healthz` component.
fn component(table: &str) -> String {
    format!("postgres tokens {table}")
}

/// Sleeps until `at`; never when `None` (the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn delete_once(pool: &Pool, table: &str, tokens: &[String]) -> Result<Deleted, Failure> {
    let client = pool.get().await.map_err(|e| Failure {
        kind: Fault::Transient,
        timed_out: false,
        message: crate::telemetry::with_causes(&e),
    })?;
    let statement = client
        .prepare_cached(&delete_sql(table))
        .await
        .map_err(Failure::from)?;
    let deleted = match client.query(&statement, &[&tokens]).await {
        Ok(rows) => rows,
        Err(e) => {
            let failure = Failure::from(e);
            // A statement prepared before the table changed ("cached plan must not change
            // result type", 0A000, after an ALTER of the token column) fails the same way on
            // this connection for good: prepared again on the next attempt.
            if failure.kind == Fault::Table {
                client.statement_cache.clear();
            }
            return Err(failure);
        }
    };
    // A token column of a type that does not read as text (the statement committed anyway)
    // counts its rows as nonexistent rather than failing.
    let found: BTreeSet<&str> = deleted
        .iter()
        .filter_map(|row| row.try_get(0).ok())
        .collect();
    Ok(Deleted {
        rows: deleted.len() as u64,
        tokens_found: found.len() as u64,
    })
}

/// What one DELETE removed. Several users may share a token (seed comment), so rows and
/// distinct tokens differ; "nonexistent" counts tokens that had no row at all.
struct Deleted {
    rows: u64,
    tokens_found: u64,
}

/// Whose fault a failed DELETE is, which decides what happens to its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Connection trouble, a timeout, a lock, a failover: retried as it is.
    Transient,
    /// Something about a token (a data error, a trigger's exception): split to find it.
    Token,
    /// The table or its configuration (no such table, no grant, another column type):
    /// nothing a message did; retried like an outage until someone fixes it.
    Table,
}

/// Why one DELETE failed.
struct Failure {
    kind: Fault,
    /// Cancelled by `statement_timeout`: the next attempt sends fewer tokens.
    timed_out: bool,
    message: String,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        match e.as_db_error() {
            // No SQLSTATE: connection trouble.
            None => Failure {
                kind: Fault::Transient,
                timed_out: false,
                message: crate::telemetry::with_causes(&e),
            },
            // The error's own text ("db error" alone says nothing), with its SQLSTATE.
            Some(db) => Failure {
                kind: fault(db.code().code()),
                timed_out: db.code() == &SqlState::QUERY_CANCELED,
                message: format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            },
        }
    }
}

/// By SQLSTATE class. Worth retrying as it is: "connection exception", "insufficient
/// resources", "operator intervention" (57014: cancelled by the statement timeout), "transaction
/// rollback", "invalid transaction state" (a read-only standby after a failover), "object not
/// in prerequisite state" (a lock not available) and "system error" (I/O). A token's doing:
/// "data exception" (22P05: a character the server encoding lacks), "integrity constraint
/// violation", "cardinality violation", "triggered action/data change" and routine
/// exceptions, PL/pgSQL's `RAISE` (P0001). Anything else (42P01 no such table, 42501 no grant,
/// ...) is the table's.
fn fault(sqlstate: &str) -> Fault {
    match sqlstate.get(..2).unwrap_or_default() {
        "08" | "53" | "57" | "40" | "25" | "55" | "58" => Fault::Transient,
        "22" | "23" | "21" | "09" | "27" | "2F" | "38" | "39" | "44" | "P0" => Fault::Token,
        _ => Fault::Table,
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

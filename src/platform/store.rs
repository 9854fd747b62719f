//! The platform's PostgreSQL state (DESIGN.md §10): the schema, and the idempotency claims of
//! `pusher api`. Every statement takes a whole request's notifications at once (arrays and
//! `unnest`), so a request costs the same round trips whatever it holds.

use crate::config::PgConfig;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The schema, also in `fixtures/platform.sql` for whoever creates tables by hand.
pub const SCHEMA: &str = include_str!("../../fixtures/platform.sql");

/// How long an app announced by a results process with its hook counts as hooked: longer than
/// an outage of that process (with 10 minutes, a crash loop of 15 lost, silently, the webhooks
/// of what completed after the tenth), so what completes meanwhile waits for the hook instead
/// of being dropped. An app whose hook was removed for good is handed over until then, or
/// until its row in `pusher_webhook_apps` is deleted.
pub const HOOKED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused a statement: not the request's fault.
    #[error("PostgreSQL: {0}")]
    Unavailable(String),
    /// A client-chosen `notif_id` that another notification of the app already has.
    #[error("notif_id {0:?} already belongs to another notification of this app")]
    NotifIdTaken(String),
    /// PostgreSQL refused a value the request holds (a NUL byte, a value past an index's
    /// size or a type's range): the request's fault, and it would be refused again.
    #[error("PostgreSQL refused a value of the request: {0}")]
    Refused(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Class 22 is "data exception", 54 "program limit exceeded" (an index row too big).
        let refused = e
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("54"));
        let text = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => crate::telemetry::with_causes(&e),
        };
        if refused {
            StoreError::Refused(text)
        } else {
            StoreError::Unavailable(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            // A new connection failed: PostgreSQL's own words (a role or database that does
            // not exist), where deadpool's text says only "db error".
            // Unavailable whatever its SQLSTATE: no connection is a request's fault.
            // Otherwise the causes: "error connecting to server" alone did not say whether
            // the host was unknown, refused or silent.
            deadpool_postgres::PoolError::Backend(e) => {
                StoreError::Unavailable(e.as_db_error().map_or_else(
                    || crate::telemetry::with_causes(&e),
                    |db| db.message().to_owned(),
                ))
            }
            e => StoreError::Unavailable(crate::telemetry::with_causes(&e)),
        }
    }
}

// Plans for an app PostgreSQL's statistics do not know yet (a new app, or one grown since the
// last ANALYZE) are the trap of these tables: the planner estimates one row for `app = $1`,
// and at one row an index on `app` alone costs the same as the one on (app, key), so it reads
// every row of the app and filters, or re-runs a subquery per row. Statements that filter or
// join by app therefore *fence* their parameters: `app = (SELECT $1::text)` and
// `key = ANY((SELECT $2::text[])::text[])` are computed once before the scan (an InitPlan), so
// the plan does not depend on which app it is for and reads the index by key. A plan audit
// (2026-12-06, an unanalysed app of 180,000 rows beside an analysed one) measured, per batch:
// 30-600 ms before, 0.1-90 ms after; a segment's page with a language condition 48.5 s -> 11 ms.

/// Runs `sql` as a statement prepared once per connection and kept (deadpool's cache): a call
/// costs one round trip and no parse, where `Client::query` with a `&str` costs two and a parse.
pub(super) async fn query(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

/// `query` for a statement that returns no rows: how many it touched.
pub(super) async fn execute(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.execute(&statement, params).await
}

/// `query` for exactly one row.
pub(super) async fn query_one(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, tokio_postgres::Error> {
    let statement = client.prepare_cached(sql).await?;
    client.query_one(&statement, params).await
}

/// What a keyed notification's records are (SHA-256 over each record's topic, key and
/// payload): a retry with the same key and other content is told apart from a true retry.
/// Taken of the records rather than of the body, so that a client that serializes its retry
/// differently (key order, spaces) still matches.
pub fn fingerprint<'a>(records: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>) -> Vec<u8> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for (topic, key, payload) in records {
        for part in [topic.as_bytes(), key.as_bytes(), payload] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    digest.finish().as_ref().to_vec()
}

/// One notification of a request, as the claim sees it.
#[derive(Debug, Clone)]
pub struct ClaimKey {
    pub idem_key: String,
    /// The id this request would give it (the first request's id wins on a retry).
    pub notif_id: String,
}

/// What a claim found for one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This request owns it and must produce it (new, or taken over from a request that died).
    Ours { notif_id: String },
    /// An earlier request with the same key was accepted: produce nothing, answer as it did.
    /// `fingerprint`: what its records were ([`fingerprint`]); None for one accepted before
    /// fingerprints were kept.
    Done {
        notif_id: String,
        targets: u32,
        fingerprint: Option<Vec<u8>>,
    },
    /// Another request with the same key is producing it right now; its claim goes stale
    /// (and a retry takes it over) in `stale_in`.
    Busy { stale_in: Duration },
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// `invalidToken.pg.statementTimeout` in ms (0: none), the schema's lock timeout.
    lock_timeout_ms: u128,
}

impl Store {
    pub fn new(pg: &PgConfig) -> Result<Store, StoreError> {
        crate::pipeline::tokens::pg_pool(pg)
            .map(|pool| Store {
                pool,
                lock_timeout_ms: pg.statement_timeout.as_millis(),
            })
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// A store on a pool another part opened (`pusher route` shares the registry's).
    pub fn with_pool(pool: Pool) -> Store {
        Store {
            pool,
            lock_timeout_ms: 0,
        }
    }

    /// The longest one statement can take, waiting for a pooled connection included (`None`:
    /// no statement timeout, no bound).
    pub fn statement_bound(&self) -> Option<Duration> {
        (self.lock_timeout_ms > 0)
            .then(|| Duration::from_millis(self.lock_timeout_ms as u64).saturating_mul(2))
    }

    /// The connection pool (the registry shares it).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Creates the tables when they are missing and brings older ones to the current shape
    /// (`fixtures/platform.sql`). Serialised by an advisory lock: two processes starting at
    /// once would otherwise race in `CREATE TABLE IF NOT EXISTS`. Without the statement
    /// timeout (bringing a large table to the current shape may take longer, and is done
    /// once), but with it as a lock timeout: `ALTER TABLE` queues for its lock at every start,
    /// and every statement on the table queues behind it; waiting without end (a dump holding
    /// the table), it stopped the whole platform. Past it, the start fails, naming the lock.
    ///
    /// Run once per shape of the schema: its SHA-256 is recorded in `pusher_schema`, and a
    /// start that finds its own there runs nothing. Each `ALTER TABLE` and `CREATE INDEX`
    /// takes its table's lock even when there is nothing to change, so every start of every
    /// process locked the registry briefly, and a start beside a verdict's statement
    /// deadlocked with it (seen in CI).
    pub async fn init(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let version: String = ring::digest::digest(&ring::digest::SHA256, SCHEMA.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let change = format!(
            "SET client_min_messages = warning; BEGIN; \
             SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = 0; \
             SELECT pg_advisory_xact_lock(7210417); {SCHEMA} \
             CREATE TABLE IF NOT EXISTS pusher_schema ( \
                 version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO pusher_schema (version) VALUES ('{version}') ON CONFLICT DO NOTHING; \
             COMMIT;",
            self.lock_timeout_ms
        );
        // The change takes the tables in the file's order, live statements in theirs (a
        // results batch: verdicts, then notifications), and PostgreSQL cancels one side of a
        // deadlock (12 in 54 changes under load, seen 2026-12-07): when it is the change, it
        // runs again, as the other side's batch does.
        let mut attempt = 0;
        loop {
            attempt += 1;
            // No table yet (a new database) reads as "not this shape". Asked again before a
            // retry: another process may have made the change meanwhile.
            let current = client
                .query_opt(
                    "SELECT 1 FROM pusher_schema WHERE version = $1",
                    &[&version],
                )
                .await
                .ok()
                .flatten()
                .is_some();
            if current {
                return Ok(());
            }
            let Err(e) = client.batch_execute(&change).await else {
                return Ok(());
            };
            // An error inside the transaction leaves it open and failed: the connection goes
            // back to the pool clean.
            let _ = client.batch_execute("ROLLBACK").await;
            let code = e.code().cloned();
            if code == Some(tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) && attempt < 5 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                continue;
            }
            if code == Some(tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return Err(StoreError::Unavailable(format!(
                    "waited {} ms for the platform's tables, held elsewhere (another process \
                     changing them, a dump, a long transaction): {}",
                    self.lock_timeout_ms,
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |db| db.message().to_owned())
                )));
            }
            return Err(e.into());
        }
    }

    /// Claims `keys` for the request `claim`, in one statement: a new key is ours; a key whose
    /// request died (pending for longer than `stale_after`) is taken over, keeping its first
    /// notif_id; the rest are looked up to tell done from busy.
    pub async fn claim(
        &self,
        app: &str,
        claim: &str,
        keys: &[ClaimKey],
        stale_after: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let client = self.pool.get().await?;
        let idem: Vec<&str> = keys.iter().map(|k| k.idem_key.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.notif_id.as_str()).collect();
        let stale = stale_after.as_secs_f64();
        // Rows in notif_id order, as `record_accepted` and `set_targets` write theirs: taken
        // in different orders, two statements on shared rows deadlocked (40P01).
        // A new row counts the verdicts its notif_id already has (`done`): records of a request
        // that failed after one reached Kafka may have them.
        const CLAIM: &str = "INSERT INTO pusher_notifications AS n
                   (app, idem_key, notif_id, claim, done)
                 SELECT $1, k, id, $4, (SELECT count(*) FROM pusher_results r
                                        WHERE r.app = $1 AND r.notif_id = t.id)
                 FROM unnest($2::text[], $3::text[]) AS t(k, id)
                 ORDER BY id
                 ON CONFLICT (app, idem_key) WHERE idem_key IS NOT NULL DO UPDATE
                   SET claim = EXCLUDED.claim, claimed_at = now()
                   WHERE n.state = 'pending'
                     AND n.claimed_at < now() - make_interval(secs => $5)
                 RETURNING idem_key, notif_id";
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&app, &idem, &ids, &claim, &stale];
        let rows = match query(&client, CLAIM, &params)
            .await
            .map_err(|e| taken(e, keys))
        {
            // The id may be held by a row only the router wrote (`set_targets`): its request
            // failed after a record reached Kafka, and gave its claim back. That row is no
            // one's; the retry takes the id.
            Err(StoreError::NotifIdTaken(_))
                if execute(
                    &client,
                    "DELETE FROM pusher_notifications
                     WHERE app = (SELECT $1::text) AND notif_id = ANY((SELECT $2::text[])::text[])
                       AND idem_key IS NULL AND claim = '' AND state = 'pending'",
                    &[&app, &ids],
                )
                .await?
                    > 0 =>
            {
                query(&client, CLAIM, &params)
                    .await
                    .map_err(|e| taken(e, keys))?
            }
            other => other?,
        };
        let mut ours: std::collections::HashMap<String, String> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let others: Vec<&str> = idem
            .iter()
            .copied()
            .filter(|k| !ours.contains_key(*k))
            .collect();
        let mut found = std::collections::HashMap::new();
        if !others.is_empty() {
            for row in client
                .query(
                    // One index lookup per key, as `Registry::devices_of` (why there).
                    "SELECT n.idem_key, n.notif_id, n.state, n.targets, n.fingerprint,
                            greatest(0, $3::float8
                                - extract(epoch FROM now() - n.claimed_at)::float8)
                     FROM unnest($2::text[]) AS k(key)
                     CROSS JOIN LATERAL (SELECT idem_key, notif_id, state, targets, fingerprint,
                             claimed_at
                         FROM pusher_notifications
                         WHERE app = (SELECT $1::text) AND idem_key = k.key OFFSET 0) AS n",
                    &[&app, &others, &stale],
                )
                .await?
            {
                let state: String = row.get(2);
                let claimed = if state == "accepted" {
                    Claimed::Done {
                        notif_id: row.get(1),
                        targets: row
                            .get::<_, Option<i32>>(3)
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(0),
                        fingerprint: row.get(4),
                    }
                } else {
                    Claimed::Busy {
                        stale_in: Duration::try_from_secs_f64(row.get(5)).unwrap_or_default(),
                    }
                };
                found.insert(row.get::<_, String>(0), claimed);
            }
        }
        Ok(keys
            .iter()
            .map(|k| match ours.remove(&k.idem_key) {
                Some(notif_id) => Claimed::Ours { notif_id },
                // Gone between the two statements (its request released it): busy, retry
                // at once.
                None => found.remove(&k.idem_key).unwrap_or(Claimed::Busy {
                    stale_in: Duration::ZERO,
                }),
            })
            .collect())
    }

    /// Marks the request's claimed notifications accepted, with their record counts and
    /// the fingerprints of their records (in the same order; fewer leave the rest NULL). Returns
    /// how many were still this request's (a claim taken over by a retry is not).
    pub async fn confirm(
        &self,
        app: &str,
        claim: &str,
        accepted: &[(String, Option<u32>)],
        fingerprints: &[Vec<u8>],
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let keys: Vec<&str> = accepted.iter().map(|(k, _)| k.as_str()).collect();
        let targets = targets_column(accepted);
        let confirmed = execute(
            &client,
            // A routed notification's targets are the router's, who may have set them
            // already (it can read the request record before this runs): kept.
            "UPDATE pusher_notifications AS n
                 SET state = 'accepted', accepted_at = now(),
                     targets = COALESCE(n.targets, t.targets), fingerprint = t.fingerprint
                 FROM unnest($2::text[], $3::int[], $5::bytea[]) AS t(k, targets, fingerprint)
                 WHERE n.app = (SELECT $1::text) AND n.idem_key = ANY((SELECT $2::text[])::text[])
                   AND n.idem_key = t.k AND n.claim = $4",
            &[&app, &keys, &targets, &claim, &fingerprints],
        )
        .await?;
        Ok(confirmed)
    }

    /// Records notifications that needed no claim (nothing to dedup on) as accepted, with their
    /// record counts: one INSERT, with no idempotency key.
    pub async fn record_accepted(
        &self,
        app: &str,
        accepted: &[(String, Option<u32>)],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = accepted.iter().map(|(id, _)| id.as_str()).collect();
        let targets = targets_column(accepted);
        let client = self.pool.get().await?;
        execute(
            &client,
            // The router may have written the row first (`set_targets`: it can read the
            // request record before this runs); its targets are kept. In notif_id order, as
            // `set_targets` writes (opposite orders deadlocked). A new row counts the verdicts
            // already stored (`done`): Kafka acknowledged its records before this runs, and a
            // verdict can be faster.
            "INSERT INTO pusher_notifications AS n
                   (app, idem_key, notif_id, state, claim, accepted_at, targets, done)
                 SELECT $1, NULL, t.id, 'accepted', '', now(), t.targets,
                        (SELECT count(*) FROM pusher_results r
                         WHERE r.app = $1 AND r.notif_id = t.id)
                 FROM unnest($2::text[], $3::int[]) AS t(id, targets)
                 ORDER BY t.id
                 ON CONFLICT (app, notif_id) DO UPDATE
                   SET state = 'accepted', accepted_at = EXCLUDED.accepted_at,
                       targets = COALESCE(n.targets, EXCLUDED.targets)",
            &[&app, &ids, &targets],
        )
        .await?;
        Ok(())
    }

    /// Gives up the request's pending claims (Kafka refused its records), so that a retry
    /// produces them at once instead of waiting for the claims to go stale.
    /// `keys` are the request's: by them the rows are found in the idempotency index, where
    /// the claim alone would read all the app's rows (during an outage, for every request).
    pub async fn release(
        &self,
        app: &str,
        claim: &str,
        keys: &[ClaimKey],
    ) -> Result<(), StoreError> {
        let idem: Vec<&str> = keys.iter().map(|k| k.idem_key.as_str()).collect();
        let client = self.pool.get().await?;
        execute(
            &client,
            "DELETE FROM pusher_notifications
                 WHERE app = (SELECT $1::text) AND idem_key = ANY((SELECT $3::text[])::text[])
                   AND claim = $2 AND state = 'pending'",
            &[&app, &claim, &idem],
        )
        .await?;
        Ok(())
    }

    /// Records that the `/ui` session whose cookie has SHA-256 `digest` was signed out, until
    /// `expiry` (Unix seconds), when it ends anyway: every process refuses it from now on. Rows
    /// of sessions past their end go at each sign-out.
    pub async fn sign_out(&self, digest: &[u8], expiry: u64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        execute(
            &client,
            "WITH ended AS (DELETE FROM pusher_ui_signed_out WHERE expires_at < now())
             INSERT INTO pusher_ui_signed_out (session, expires_at)
             VALUES ($1, to_timestamp($2)) ON CONFLICT (session) DO NOTHING",
            &[&digest, &(expiry as f64)],
        )
        .await?;
        Ok(())
    }

    /// Whether the `/ui` session whose cookie has SHA-256 `digest` was signed out.
    pub async fn signed_out(&self, digest: &[u8]) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = query_one(
            &client,
            "SELECT EXISTS (SELECT 1 FROM pusher_ui_signed_out WHERE session = $1)",
            &[&digest],
        )
        .await?;
        Ok(row.get(0))
    }

    /// True when the database answers and takes writes: a server that answers reads but
    /// refuses every write (a read-only replica after a failover, `default_transaction_read_only`)
    /// refuses every request, so `/healthz` must not say ok.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .simple_query("SELECT current_setting('transaction_read_only')")
            .await?;
        let read_only = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("on"),
            _ => false,
        });
        if read_only {
            return Err(StoreError::Unavailable(
                "the server is read-only (a standby, or default_transaction_read_only)".into(),
            ));
        }
        Ok(())
    }
}

/// `(app, notif_id)` pairs as the two columns `unnest` takes.
fn pair_columns(pairs: &[(String, String)]) -> (Vec<&str>, Vec<&str>) {
    pairs
        .iter()
        .map(|(app, id)| (app.as_str(), id.as_str()))
        .unzip()
}

/// Locks the notifications `(apps[i], ids[i])` in key order, as `store_results` locks them:
/// a statement counting their verdicts after this sees every verdict already added to `done`.
async fn lock_notifications(
    tx: &deadpool_postgres::Transaction<'_>,
    apps: &[String],
    ids: &[String],
) -> Result<(), tokio_postgres::Error> {
    let lock = tx
        .prepare_cached(
            "SELECT 1 FROM pusher_notifications n
                 JOIN unnest($1::text[], $2::text[]) AS t(app, notif_id)
                   ON n.app = t.app AND n.notif_id = t.notif_id
                 ORDER BY n.app, n.notif_id FOR UPDATE OF n",
        )
        .await?;
    tx.query(&lock, &[&apps, &ids]).await?;
    Ok(())
}

/// Sets the running count of the notifications `(apps[i], ids[i])` (locked) to their verdicts
/// and claims the webhook of those now complete, accepted and not claimed yet: those, with
/// their verdicts counted by outcome.
async fn count_and_claim(
    tx: &deadpool_postgres::Transaction<'_>,
    apps: &[String],
    ids: &[String],
) -> Result<Vec<Completed>, tokio_postgres::Error> {
    let claim = tx
        .prepare_cached(
            "UPDATE pusher_notifications AS n
                 SET done = c.done,
                     notified_at = CASE WHEN c.done >= n.targets THEN now() END
                 FROM (SELECT app, notif_id, sum(n)::int AS done,
                              array_agg(outcome) AS outcomes, array_agg(n) AS counts
                       FROM (SELECT r.app, r.notif_id, r.outcome, count(*) AS n
                             FROM pusher_results r
                             JOIN unnest($1::text[], $2::text[]) AS t(app, notif_id)
                               ON r.app = t.app AND r.notif_id = t.notif_id
                             GROUP BY r.app, r.notif_id, r.outcome) AS o
                       GROUP BY app, notif_id) AS c
                 WHERE n.app = c.app AND n.notif_id = c.notif_id AND n.state = 'accepted'
                   AND n.notified_at IS NULL AND n.targets > 0
                 RETURNING n.app, n.notif_id, n.targets, c.outcomes, c.counts,
                           n.notified_at IS NOT NULL",
        )
        .await?;
    let rows = tx.query(&claim, &[&apps, &ids]).await?;
    Ok(rows
        .iter()
        .filter(|r| r.get::<_, bool>(5))
        .map(|r| {
            let outcomes: Vec<String> = r.get(3);
            let counts: Vec<i64> = r.get(4);
            Completed {
                app: r.get(0),
                notif_id: r.get(1),
                targets: r.get(2),
                counts: outcomes.into_iter().zip(counts).collect(),
            }
        })
        .collect())
}

/// A unique violation on `(app, notif_id)`: a client-chosen notif_id already taken.
fn taken(e: tokio_postgres::Error, keys: &[ClaimKey]) -> StoreError {
    let on_notif_id = e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint().is_some_and(|c| c.contains("notif_id"))
    });
    if !on_notif_id {
        return StoreError::from(e);
    }
    // PostgreSQL's detail names the value: `Key (app, notif_id)=(game, n-1) already exists.`
    let detail = e
        .as_db_error()
        .and_then(|db| db.detail())
        .unwrap_or_default();
    let id = keys
        .iter()
        .find(|k| detail.contains(&format!(", {})", k.notif_id)))
        .map(|k| k.notif_id.clone())
        .unwrap_or_default();
    StoreError::NotifIdTaken(id)
}

/// The `targets` of accepted notifications as a column (NULL: not known yet).
fn targets_column(accepted: &[(String, Option<u32>)]) -> Vec<Option<i32>> {
    accepted.iter().map(|(_, n)| n.map(int_column)).collect()
}

/// A count as PostgreSQL's `int` (a count past its range is held at its largest).
fn int_column(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A notification with a verdict for each of its targets, as its webhook reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub app: String,
    pub notif_id: String,
    pub targets: i32,
    /// Verdicts by outcome.
    pub counts: std::collections::BTreeMap<String, i64>,
}

/// One verdict for one (notification, token).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResultRow {
    pub app: String,
    pub notif_id: String,
    pub token: String,
    pub platform: String,
    pub outcome: String,
    pub reason: String,
    /// When the pusher consumed the message, Unix milliseconds.
    pub at_ms: i64,
    /// For `token_invalid`, since when the vendor says the token is invalid (APNs' 410
    /// `timestamp`), Unix milliseconds, where it said.
    pub invalid_since_ms: Option<i64>,
}

/// A notification as the API accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRow {
    pub notif_id: String,
    pub state: String,
    /// Verdicts that make it complete; `None` until `pusher route` knows (or for an event).
    pub targets: Option<u32>,
    pub accepted_at: Option<i64>,
    /// Its webhook call: `calling`, `ok` or `failed`; `None` before it is complete, or
    /// without a hook.
    pub webhook: Option<String>,
}

impl Store {
    /// Stores verdicts in one statement; an older verdict never overwrites a newer one. Each
    /// new (notification, token) row adds one to its notification's `done`, in the same
    /// statement: whether a notification is complete is then a one-row check. Returns the
    /// notifications that got new rows while they had no row of their own to count them (a
    /// verdict faster than the API, or than the router recording what it reached): a row made
    /// meanwhile may have missed them, so [`Store::claim_completed`] counts those again.
    /// Those, and those whose row is still pending, of apps with a webhook
    /// (`pusher_webhook_apps`), are kept in `pusher_early_verdicts` with the verdicts, for
    /// [`Store::claim_ready`]: once they are ready, no verdict may come to say so.
    pub async fn store_results(
        &self,
        rows: &[ResultRow],
    ) -> Result<Vec<(String, String)>, StoreError> {
        // One row per key (the newest): a statement may not touch a row twice.
        let mut newest: std::collections::HashMap<(&str, &str, &str), &ResultRow> =
            std::collections::HashMap::new();
        for r in rows {
            let slot = newest
                .entry((r.app.as_str(), r.notif_id.as_str(), r.token.as_str()))
                .or_insert(r);
            if r.at_ms >= slot.at_ms {
                *slot = r;
            }
        }
        let rows: Vec<&ResultRow> = newest.into_values().collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let col = |f: fn(&ResultRow) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<&str>>();
        let at: Vec<f64> = rows.iter().map(|r| r.at_ms as f64 / 1000.0).collect();
        let client = self.pool.get().await?;
        let uncounted = query(
            &client,
            // `xmax = 0`: the row was inserted, not updated (a verdict replacing an older one
            // for the same token adds nothing). The notifications are locked in key order
            // before `done` is added to, as `claim_completed` locks them: two results processes
            // storing verdicts of the same notifications in other orders deadlocked otherwise.
            // Not ready (`early`): no row (an event's `<event id>.<message>` never has one: left
            // out) or a pending one; written after those rows are locked, in key order, as
            // `claim_ready` locks the rows, then these. The app's totals (`tallied`, gorush's
            // `/api/stat/app`): PostgreSQL runs the unreferenced CTEs after the rest (these
            // before `early`), in key order; only this statement writes them, each connection
            // into its own `shard` (of 16) of the app's row, so results processes storing the
            // same app's verdicts at once seldom wait there, holding the rows above.
            "WITH stored AS (
                 INSERT INTO pusher_results AS r
                       (app, notif_id, token, platform, outcome, reason, at)
                     SELECT t.app, t.notif_id, t.token, t.platform, t.outcome, t.reason,
                            to_timestamp(t.at)
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::float8[])
                       AS t(app, notif_id, token, platform, outcome, reason, at)
                     ON CONFLICT (app, notif_id, token) DO UPDATE
                       SET platform = EXCLUDED.platform, outcome = EXCLUDED.outcome,
                           reason = EXCLUDED.reason, at = EXCLUDED.at
                       WHERE r.at <= EXCLUDED.at
                     RETURNING r.app, r.notif_id, r.platform, r.outcome, r.xmax = 0 AS inserted),
             fresh AS (
                 SELECT app, notif_id, count(*)::int AS n FROM stored WHERE inserted
                 GROUP BY app, notif_id),
             locked AS MATERIALIZED (
                 SELECT w.app, w.notif_id FROM pusher_notifications w
                 JOIN fresh ON w.app = fresh.app AND w.notif_id = fresh.notif_id
                 ORDER BY w.app, w.notif_id FOR UPDATE OF w),
             counted AS (
                 UPDATE pusher_notifications AS w SET done = w.done + fresh.n
                 FROM fresh, locked
                 WHERE w.app = fresh.app AND w.notif_id = fresh.notif_id
                   AND locked.app = fresh.app AND locked.notif_id = fresh.notif_id
                 RETURNING w.app, w.notif_id, w.state),
             uncounted AS (
                 SELECT fresh.app, fresh.notif_id FROM fresh
                 WHERE NOT EXISTS (SELECT 1 FROM counted c
                                   WHERE c.app = fresh.app AND c.notif_id = fresh.notif_id)),
             early AS (
                 INSERT INTO pusher_early_verdicts AS e (app, notif_id)
                 SELECT x.app, x.notif_id FROM (
                     SELECT app, notif_id FROM uncounted WHERE strpos(notif_id, '.') = 0
                     UNION SELECT app, notif_id FROM counted WHERE state = 'pending') AS x
                 WHERE EXISTS (SELECT 1 FROM pusher_webhook_apps h WHERE h.app = x.app
                               AND h.seen_at > now() - make_interval(secs => $8))
                 ORDER BY x.app, x.notif_id
                 ON CONFLICT (app, notif_id) DO UPDATE
                   SET seen_at = greatest(e.seen_at, EXCLUDED.seen_at)),
             tallied AS (
                 INSERT INTO pusher_result_totals AS t
                       (app, platform, shard, delivered, failed)
                 SELECT app, platform, (pg_backend_pid() % 16)::smallint,
                        count(*) FILTER (WHERE outcome = 'delivered'),
                        count(*) FILTER (WHERE outcome <> 'delivered')
                 FROM stored WHERE inserted GROUP BY app, platform ORDER BY app, platform
                 ON CONFLICT (app, platform, shard) DO UPDATE
                   SET delivered = t.delivered + EXCLUDED.delivered,
                       failed = t.failed + EXCLUDED.failed)
             SELECT app, notif_id FROM uncounted",
            &[
                &col(|r| &r.app),
                &col(|r| &r.notif_id),
                &col(|r| &r.token),
                &col(|r| &r.platform),
                &col(|r| &r.outcome),
                &col(|r| &r.reason),
                &at,
                &HOOKED_FOR.as_secs_f64(),
            ],
        )
        .await?;
        Ok(uncounted.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Removes from the registry the tokens whose verdict said they are invalid, unless they
    /// were registered again after the message was consumed (the verdict is about the old
    /// registration) or after the moment the vendor says the token became invalid (APNs'
    /// 410 `timestamp`: Apple's rule is to stop pushing to it "unless it's re-registered with
    /// a later timestamp"), and remembers each token's newest such verdict
    /// (`pusher_dead_tokens`), so that a registration older than it, arriving later, does not
    /// bring the token back. Returns how many devices were removed.
    pub async fn forget_invalid_tokens(&self, rows: &[ResultRow]) -> Result<u64, StoreError> {
        let dead: Vec<&ResultRow> = rows
            .iter()
            .filter(|r| r.outcome == "token_invalid")
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let apps: Vec<&str> = dead.iter().map(|r| r.app.as_str()).collect();
        let tokens: Vec<&str> = dead.iter().map(|r| r.token.as_str()).collect();
        let at: Vec<f64> = dead
            .iter()
            .map(|r| r.invalid_since_ms.map_or(r.at_ms, |s| s.min(r.at_ms)) as f64 / 1000.0)
            .collect();
        let client = self.pool.get().await?;
        Ok(execute(
            &client,
            // One statement: the tombstones and the deletion commit together. Grouped, as one
            // batch may hold several verdicts for a token (ON CONFLICT may touch a row once),
            // and in key order, so that two results processes lock shared rows in one order.
            // The devices too are locked in key order first, as `Registry::register` writes
            // them: deleted in the verdicts' order, they deadlocked with a batch of logins.
            "WITH verdicts AS MATERIALIZED (
                 SELECT app, token, max(to_timestamp(at)) AS at
                 FROM unnest($1::text[], $2::text[], $3::float8[]) AS t(app, token, at)
                 GROUP BY app, token),
             dead AS (
                 INSERT INTO pusher_dead_tokens AS x (app, token, dead_at)
                 SELECT app, token, at FROM verdicts ORDER BY app, token
                 ON CONFLICT (app, token) DO UPDATE SET dead_at = EXCLUDED.dead_at
                   WHERE x.dead_at < EXCLUDED.dead_at),
             doomed AS MATERIALIZED (
                 SELECT d.app, d.token, v.at FROM pusher_devices AS d
                 JOIN verdicts AS v ON d.app = v.app AND d.token = v.token
                 WHERE d.updated_at < v.at
                 ORDER BY d.app, d.token FOR UPDATE OF d)
             DELETE FROM pusher_devices AS d USING doomed AS o
                 WHERE d.app = o.app AND d.token = o.token AND d.updated_at < o.at",
            &[&apps, &tokens, &at],
        )
        .await?)
    }

    /// Deletes the tombstones of tokens refused longer than `kept` ago, a bounded chunk per
    /// statement so that no statement holds many row locks or runs long, skipping the rows a
    /// verdict is refreshing meanwhile (it never waits for a lock, so it cannot deadlock with
    /// `forget_invalid_tokens`: seen in tests, where both ran at once). Returns how many.
    pub async fn prune_dead_tokens(&self, kept: Duration) -> Result<u64, StoreError> {
        const CHUNK: i64 = 10_000;
        let client = self.pool.get().await?;
        let mut pruned = 0;
        loop {
            let n = execute(
                &client,
                "DELETE FROM pusher_dead_tokens WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM pusher_dead_tokens
                     WHERE dead_at < now() - make_interval(secs => $1) LIMIT $2
                     FOR UPDATE SKIP LOCKED))",
                &[&kept.as_secs_f64(), &CHUNK],
            )
            .await?;
            pruned += n;
            if n < CHUNK as u64 {
                return Ok(pruned);
            }
        }
    }

    /// Of the `(app, notif_id)` pairs, those now complete (a verdict for each of their
    /// `targets`) whose webhook nobody claimed yet: claimed here, with their verdicts counted
    /// by outcome, so that one results process calls each and a failure leaves nothing claimed
    /// and uncounted. Whether one may be complete is read from its running count (`done`, kept
    /// by `store_results`): one row each, where counting every verdict of a broadcast on each
    /// batch of its verdicts was quadratic. Only those, and those in `recount` (whose count
    /// may be short: see `store_results`), have their verdicts counted, once, with their rows
    /// locked first: a verdict stored meanwhile waits and adds itself to the count after.
    pub async fn claim_completed(
        &self,
        pairs: &[(String, String)],
        recount: &std::collections::HashSet<(String, String)>,
    ) -> Result<Vec<Completed>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let (apps, ids) = pair_columns(pairs);
        let again: Vec<bool> = pairs.iter().map(|p| recount.contains(p)).collect();
        let mut client = self.pool.get().await?;
        // Not one already notified, nor a segment still streaming (targets NULL).
        let candidates = query(
            &client,
            "SELECT DISTINCT n.app, n.notif_id
                 FROM unnest($1::text[], $2::text[], $3::bool[]) AS t(app, notif_id, again)
                 JOIN pusher_notifications n ON n.app = t.app AND n.notif_id = t.notif_id
                 WHERE n.state = 'accepted' AND n.notified_at IS NULL AND n.targets > 0
                   AND (t.again OR n.done >= n.targets)",
            &[&apps, &ids, &again],
        )
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let apps: Vec<String> = candidates.iter().map(|r| r.get(0)).collect();
        let ids: Vec<String> = candidates.iter().map(|r| r.get(1)).collect();
        let tx = client.transaction().await?;
        lock_notifications(&tx, &apps, &ids).await?;
        let complete = count_and_claim(&tx, &apps, &ids).await?;
        tx.commit().await?;
        Ok(complete)
    }

    /// Of `apps`' notifications whose verdicts came before they were ready
    /// (`pusher_early_verdicts`, kept by `store_results`), those now ready (accepted, their
    /// targets known), up to `limit`: their verdicts counted again (a row made while some were
    /// being stored missed them), those complete claimed as [`Store::claim_completed`] claims
    /// them, and none of them waiting any longer, in one transaction. Then those of any app
    /// still not ready `wait` after their latest verdict are dropped (their request failed, or
    /// no API accepted them), and those of an app no results process has announced a hook for
    /// since [`HOOKED_FOR`].
    pub async fn claim_ready(
        &self,
        apps: &[&str],
        wait: Duration,
        limit: i64,
    ) -> Result<Vec<Completed>, StoreError> {
        let mut client = self.pool.get().await?;
        let mut complete = Vec::new();
        if !apps.is_empty() {
            let tx = client.transaction().await?;
            let ready = tx
                .prepare_cached(
                    "SELECT e.app, e.notif_id FROM pusher_early_verdicts e
                         JOIN pusher_notifications n ON n.app = e.app AND n.notif_id = e.notif_id
                         WHERE e.app = ANY($1) AND n.state = 'accepted' AND n.targets IS NOT NULL
                         ORDER BY e.app, e.notif_id LIMIT $2",
                )
                .await?;
            let ready = tx.query(&ready, &[&apps, &limit]).await?;
            if !ready.is_empty() {
                let apps: Vec<String> = ready.iter().map(|r| r.get(0)).collect();
                let ids: Vec<String> = ready.iter().map(|r| r.get(1)).collect();
                lock_notifications(&tx, &apps, &ids).await?;
                // A verdict still being stored holds its notification's row here (if it was
                // counted) or its own (if not): counted once it is in. In key order, after the
                // notifications, as `store_results` writes them.
                let lock = tx
                    .prepare_cached(
                        "SELECT 1 FROM pusher_early_verdicts e
                             JOIN unnest($1::text[], $2::text[]) AS t(app, notif_id)
                               ON e.app = t.app AND e.notif_id = t.notif_id
                             ORDER BY e.app, e.notif_id FOR UPDATE OF e",
                    )
                    .await?;
                tx.query(&lock, &[&apps, &ids]).await?;
                complete = count_and_claim(&tx, &apps, &ids).await?;
                let done = tx
                    .prepare_cached(
                        "DELETE FROM pusher_early_verdicts AS e
                             USING unnest($1::text[], $2::text[]) AS t(app, notif_id)
                             WHERE e.app = t.app AND e.notif_id = t.notif_id",
                    )
                    .await?;
                tx.execute(&done, &[&apps, &ids]).await?;
            }
            tx.commit().await?;
        }
        execute(
            &client,
            // Locked in key order, skipping rows another statement holds, as `store_results`
            // and the claim above take them: a delete in heap order could deadlock them.
            "DELETE FROM pusher_early_verdicts AS d
                 USING (SELECT e.app, e.notif_id FROM pusher_early_verdicts AS e
                        WHERE e.seen_at < now() - make_interval(secs => $1)
                          AND (e.seen_at < now() - make_interval(secs => $2)
                               OR NOT EXISTS (SELECT 1 FROM pusher_notifications n
                                              WHERE n.app = e.app AND n.notif_id = e.notif_id
                                                AND n.state = 'accepted'
                                                AND n.targets IS NOT NULL))
                        ORDER BY e.app, e.notif_id
                        FOR UPDATE SKIP LOCKED) AS old
                 WHERE d.app = old.app AND d.notif_id = old.notif_id",
            &[&wait.as_secs_f64(), &HOOKED_FOR.as_secs_f64()],
        )
        .await?;
        Ok(complete)
    }

    /// Of `apps`' notifications, those the router found no device for (`targets` 0), whose
    /// webhook nobody claimed yet: complete with no verdict to trigger `claim_completed`, so
    /// claimed here.
    pub async fn claim_reached_none(&self, apps: &[&str]) -> Result<Vec<Completed>, StoreError> {
        if apps.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let rows = query(
            &client,
            "UPDATE pusher_notifications SET notified_at = now()
                 WHERE app = ANY($1) AND targets = 0 AND notified_at IS NULL
                   AND state = 'accepted'
                 RETURNING app, notif_id",
            &[&apps],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| Completed {
                app: r.get(0),
                notif_id: r.get(1),
                targets: 0,
                counts: Default::default(),
            })
            .collect())
    }

    /// Of `app`'s webhook calls in progress, those whose claim is older than `lease` (its
    /// process died, or stopped without ending them, or handed them back), up to `limit`,
    /// the oldest first: claimed again here, with their verdicts counted by outcome, so this
    /// process calls them.
    pub async fn claim_abandoned_webhooks(
        &self,
        app: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Completed>, StoreError> {
        let client = self.pool.get().await?;
        let rows = query(
            &client,
            "WITH claimed AS (
                 UPDATE pusher_notifications AS n SET notified_at = now()
                 FROM (SELECT app, notif_id FROM pusher_notifications
                       WHERE app = (SELECT $1::text) AND notified_at IS NOT NULL
                         AND webhook IS NULL
                         AND notified_at < now() - make_interval(secs => $2)
                       ORDER BY notified_at LIMIT $3 FOR UPDATE SKIP LOCKED) AS old
                 WHERE n.app = old.app AND n.notif_id = old.notif_id
                 RETURNING n.app, n.notif_id, n.targets)
             SELECT c.app, c.notif_id, coalesce(c.targets, 0), o.outcomes, o.counts
             FROM claimed c LEFT JOIN LATERAL (
                 SELECT array_agg(outcome) AS outcomes, array_agg(n) AS counts
                 FROM (SELECT outcome, count(*) AS n FROM pusher_results r
                       WHERE r.app = c.app AND r.notif_id = c.notif_id GROUP BY outcome) x
             ) o ON true",
            &[&app, &lease.as_secs_f64(), &limit],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let outcomes: Option<Vec<String>> = r.get(3);
                let counts: Option<Vec<i64>> = r.get(4);
                Completed {
                    app: r.get(0),
                    notif_id: r.get(1),
                    targets: r.get(2),
                    counts: outcomes
                        .unwrap_or_default()
                        .into_iter()
                        .zip(counts.unwrap_or_default())
                        .collect(),
                }
            })
            .collect())
    }

    /// Renews the claim of a webhook call still in progress (before each retry), so that no
    /// other process takes it for abandoned.
    pub async fn renew_webhook(&self, app: &str, notif_id: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        execute(
            &client,
            "UPDATE pusher_notifications SET notified_at = now()
                 WHERE app = (SELECT $1::text) AND notif_id = $2 AND webhook IS NULL",
            &[&app, &notif_id],
        )
        .await?;
        Ok(())
    }

    /// Records how a webhook call ended: answered 2xx (`ok`) or retries spent.
    pub async fn end_webhook(&self, app: &str, notif_id: &str, ok: bool) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        execute(
            &client,
            "UPDATE pusher_notifications SET webhook = $3
                 WHERE app = (SELECT $1::text) AND notif_id = $2",
            &[&app, &notif_id, &if ok { "ok" } else { "failed" }],
        )
        .await?;
        Ok(())
    }

    /// Gives up the claims of webhook calls not ended (a process stopping mid-retry), so that
    /// the next `pusher results` calls them at once instead of after the lease.
    ///
    /// A released call is due now, as one whose `lease` ran out just now: the sweep takes the
    /// calls due the longest first, so those handed back wait their turn behind older ones and
    /// before newer ones (all set to `-infinity`, they tied, and some waited without end).
    pub async fn release_webhooks(
        &self,
        pairs: &[(String, String)],
        lease: Duration,
    ) -> Result<(), StoreError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let (apps, ids) = pair_columns(pairs);
        let client = self.pool.get().await?;
        execute(
            &client,
            "UPDATE pusher_notifications AS n
                 SET notified_at = now() - make_interval(secs => $3) - interval '1 millisecond'
                 FROM unnest($1::text[], $2::text[]) AS t(app, notif_id)
                 WHERE n.app = t.app AND n.notif_id = t.notif_id AND n.webhook IS NULL",
            &[&apps, &ids, &lease.as_secs_f64()],
        )
        .await?;
        Ok(())
    }

    /// Says that this process has webhooks for `apps` (see `webhook_apps`).
    pub async fn announce_webhooks(&self, apps: &[&str]) -> Result<(), StoreError> {
        if apps.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        execute(
            &client,
            "INSERT INTO pusher_webhook_apps (app, seen_at) SELECT unnest($1::text[]), now()
                 ON CONFLICT (app) DO UPDATE SET seen_at = now()",
            &[&apps],
        )
        .await?;
        Ok(())
    }

    /// The apps some results process announced webhooks for within `fresh`.
    pub async fn webhook_apps(&self, fresh: Duration) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = query(
            &client,
            "SELECT app FROM pusher_webhook_apps WHERE seen_at > now() - make_interval(secs => $1)",
            &[&fresh.as_secs_f64()],
        )
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The notification `notif_id` of `app`, if the API accepted (or is accepting) it.
    pub async fn notification(
        &self,
        app: &str,
        notif_id: &str,
    ) -> Result<Option<NotificationRow>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT notif_id, state, targets,
                        floor(extract(epoch FROM accepted_at))::bigint,
                        CASE WHEN notified_at IS NULL THEN NULL
                             ELSE coalesce(webhook, 'calling') END
                 FROM pusher_notifications WHERE app = (SELECT $1::text) AND notif_id = $2",
                &[&app, &notif_id],
            )
            .await?;
        Ok(row.map(|r| NotificationRow {
            notif_id: r.get(0),
            state: r.get(1),
            targets: r
                .get::<_, Option<i32>>(2)
                .and_then(|n| u32::try_from(n).ok()),
            accepted_at: r.get(3),
            webhook: r.get(4),
        }))
    }

    /// What `pusher route` reached for notifications it expanded (a user's devices, a
    /// segment's): their `targets`, so the results and the webhook know when each is
    /// complete. Set, not added: a batch routed again sets the same. The row is written if
    /// the API has not yet (it records an unkeyed request's notifications after Kafka
    /// acknowledged them, and the router can be faster); the API keeps these targets.
    pub async fn set_targets(&self, app: &str, reached: &[(&str, u32)]) -> Result<(), StoreError> {
        if reached.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = reached.iter().map(|(id, _)| *id).collect();
        let targets: Vec<i32> = reached.iter().map(|(_, n)| int_column(*n)).collect();
        let client = self.pool.get().await?;
        execute(
            &client,
            // In notif_id order, as the API's statements write the same rows. A new row counts
            // the verdicts already stored (`done`: a segment's first pages may have them).
            "INSERT INTO pusher_notifications AS n (app, notif_id, claim, targets, done)
                 SELECT $1, t.id, '', t.targets,
                        (SELECT count(*) FROM pusher_results r
                         WHERE r.app = $1 AND r.notif_id = t.id)
                 FROM unnest($2::text[], $3::int[]) AS t(id, targets)
                 ORDER BY t.id
                 ON CONFLICT (app, notif_id) DO UPDATE SET targets = EXCLUDED.targets",
            &[&app, &ids, &targets],
        )
        .await?;
        Ok(())
    }

    /// A notification's verdicts counted by outcome.
    pub async fn result_counts(
        &self,
        app: &str,
        notif_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let client = self.pool.get().await?;
        let rows = query(
            &client,
            "SELECT outcome, count(*) FROM pusher_results
                 WHERE app = (SELECT $1::text) AND notif_id = $2 GROUP BY outcome",
            &[&app, &notif_id],
        )
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The app's verdicts stored so far, by platform: (platform, delivered, not delivered).
    pub async fn result_totals(&self, app: &str) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = query(
            &client,
            "SELECT platform, sum(delivered)::bigint, sum(failed)::bigint
                 FROM pusher_result_totals WHERE app = $1 GROUP BY platform",
            &[&app],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// How many verdicts the notifications `notif_ids` have, together (one statement).
    pub async fn result_total(&self, app: &str, notif_ids: &[String]) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let row = query_one(
            &client,
            "SELECT count(*) FROM pusher_results
                 WHERE app = (SELECT $1::text)
                   AND notif_id = ANY((SELECT $2::text[])::text[])",
            &[&app, &notif_ids],
        )
        .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Notifications accepted, and verdicts delivered and otherwise, in the last `seconds`.
    pub async fn recent_counts(&self, app: &str, seconds: f64) -> Result<[i64; 3], StoreError> {
        let client = self.pool.get().await?;
        let row = query_one(
            &client,
            "SELECT (SELECT count(*) FROM pusher_notifications
                         WHERE app = (SELECT $1::text)
                           AND accepted_at > now() - $2 * interval '1 second'),
                        count(*) FILTER (WHERE outcome = 'delivered'),
                        count(*) FILTER (WHERE outcome <> 'delivered')
                 FROM pusher_results
                 WHERE app = (SELECT $1::text) AND at > now() - $2 * interval '1 second'",
            &[&app, &seconds],
        )
        .await?;
        Ok([row.get(0), row.get(1), row.get(2)])
    }

    /// One page of a notification's verdicts, by token, after `after`.
    pub async fn results_page(
        &self,
        app: &str,
        notif_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ResultRow>, StoreError> {
        let client = self.pool.get().await?;
        let rows = query(
            &client,
            "SELECT token, platform, outcome, reason, floor(extract(epoch FROM at) * 1000)::bigint
                 FROM pusher_results WHERE app = $1 AND notif_id = $2 AND token > $3
                 ORDER BY token LIMIT $4",
            &[&app, &notif_id, &after, &limit],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| ResultRow {
                app: app.to_owned(),
                notif_id: notif_id.to_owned(),
                token: r.get(0),
                platform: r.get(1),
                outcome: r.get(2),
                reason: r.get(3),
                at_ms: r.get(4),
                invalid_since_ms: None,
            })
            .collect())
    }
}

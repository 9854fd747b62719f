//! The invalid-token deleter against the machine's PostgreSQL (127.0.0.1:5432, user postgres,
//! trust auth, database `test`). Each test makes its own uniquely named tables from
//! fixtures/tokens.sql and drops them.

#[path = "common/pg_proxy.rs"]
mod pg_proxy;

use pg_proxy::{PgProxy, PG_PORT};
use pusher::config::PgConfig;
use pusher::pipeline::tokens::{pg_pool, DeleterSettings, TokenDeleter, TokenError, TokenStats};
use pusher::push::Platform;
use pusher::telemetry::health::problems;
use pusher::telemetry::StatsdBatch;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

fn pg_config(port: u16) -> PgConfig {
    PgConfig {
        user: "postgres".to_owned(),
        pass: None,
        host: "127.0.0.1".to_owned(),
        database: "test".to_owned(),
        port,
        pool_size: 4,
        connection_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(30),
    }
}

fn settings() -> DeleterSettings {
    DeleterSettings {
        batch_size: 100,
        flush_interval: Duration::from_millis(20),
        queue_capacity: 1000,
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
    }
}

/// A unique app name and its tables, dropped on `drop_tables`.
struct Tables {
    app: String,
    client: tokio_postgres::Client,
}

impl Tables {
    async fn create() -> Tables {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let app = format!(
            "t{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={PG_PORT} user=postgres dbname=test"),
            NoTls,
        )
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, database test)");
        tokio::spawn(conn);
        let fixture =
            include_str!("../fixtures/tokens.sql").replace("\"game_", &format!("\"{app}_"));
        client.batch_execute(&fixture).await.unwrap();
        Tables { app, client }
    }

    async fn insert(&self, platform: Platform, tokens: &[&str]) {
        let sql = format!(
            "INSERT INTO \"{}_{platform}\" (user_id, token) SELECT 'u', unnest($1::text[])",
            self.app
        );
        let tokens: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
        self.client.execute(&sql, &[&tokens]).await.unwrap();
    }

    async fn tokens(&self, platform: Platform) -> Vec<String> {
        let sql = format!(
            "SELECT token FROM \"{}_{platform}\" ORDER BY token",
            self.app
        );
        self.client
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn drop_tables(self) {
        let sql = format!("DROP TABLE IF EXISTS \"{0}_apns\", \"{0}_gcm\"", self.app);
        self.client.batch_execute(&sql).await.unwrap();
    }
}

/// Submits each token; their tickets, in order.
async fn submit_all(
    queue: &pusher::pipeline::tokens::TokenQueue,
    app: &str,
    platform: Platform,
    tokens: &[&str],
) -> Vec<pusher::pipeline::tokens::DeletionTicket> {
    let mut tickets = Vec::new();
    for token in tokens {
        tickets.push(queue.submit(app, platform, token).await.unwrap());
    }
    tickets
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn deletes_batches_and_counts_nonexistent() {
    let tables = Tables::create().await;
    tables
        .insert(Platform::Apns, &["a1", "a1", "a2", "keep"])
        .await; // a1: two users share it
    tables.insert(Platform::Gcm, &["g1", "keep"]).await;

    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), settings());
    let queue = deleter.queue();
    for token in ["a1", "a2", "missing", "a2"] {
        queue
            .submit(&tables.app, Platform::Apns, token)
            .await
            .unwrap();
    }
    queue
        .submit(&tables.app, Platform::Gcm, "g1")
        .await
        .unwrap();
    drop(queue);
    let stats = deleter.shutdown(Duration::from_secs(10)).await;

    assert_eq!(tables.tokens(Platform::Apns).await, ["keep"]);
    assert_eq!(tables.tokens(Platform::Gcm).await, ["keep"]);
    // 3 apns rows (a1 twice, a2) + 1 gcm row; "missing" had no row; the repeated a2 is deleted once.
    assert_eq!(
        stats,
        TokenStats {
            success: 4,
            nonexistent: 1,
            ..TokenStats::default()
        }
    );
    tables.drop_tables().await;
}

#[tokio::test]
async fn a_full_batch_goes_without_waiting_for_the_timer() {
    let tables = Tables::create().await;
    tables.insert(Platform::Apns, &["x1", "x2"]).await;
    let mut s = settings();
    s.batch_size = 2;
    s.flush_interval = Duration::from_secs(3600);
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), s);
    let queue = deleter.queue();
    queue
        .submit(&tables.app, Platform::Apns, "x1")
        .await
        .unwrap();
    queue
        .submit(&tables.app, Platform::Apns, "x2")
        .await
        .unwrap();
    wait_for("the size-triggered flush", Duration::from_secs(10), || {
        queue.stats().success == 2
    })
    .await;
    assert!(tables.tokens(Platform::Apns).await.is_empty());
    drop(queue);
    deleter.shutdown(Duration::from_secs(5)).await;
    tables.drop_tables().await;
}

#[tokio::test]
async fn an_app_named_to_inject_sql_is_refused_and_counted() {
    let tables = Tables::create().await;
    tables.insert(Platform::Apns, &["t"]).await;
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), settings());
    let queue = deleter.queue();
    let evil = format!(
        "{}_apns\" ; DROP TABLE \"{}_apns\"; --",
        tables.app, tables.app
    );
    let err = queue.submit(&evil, Platform::Apns, "t").await.unwrap_err();
    assert!(matches!(err, TokenError::InvalidTableName { .. }), "{err}");
    drop(queue);
    let stats = deleter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.invalid_table, 1);
    assert_eq!(stats.success + stats.error, 0, "nothing reached SQL");
    assert_eq!(tables.tokens(Platform::Apns).await, ["t"], "table intact");
    tables.drop_tables().await;
}

/// No such table (a migration not run yet, a grant missing): not the message's fault. Before,
/// the batch was dropped after one attempt and its messages committed; now it is kept and
/// retried, counted and named on `/healthz`, and deleted once the table is there.
#[tokio::test]
async fn a_missing_table_is_kept_retried_and_reported_not_dropped() {
    let tables = Tables::create().await;
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), settings());
    let queue = deleter.queue();
    let ghost = format!("{}-late", tables.app);
    let t1 = queue.submit(&ghost, Platform::Gcm, "t1").await.unwrap();
    let t2 = queue.submit(&ghost, Platform::Gcm, "t2").await.unwrap();
    let component = format!("postgres tokens {ghost}_gcm");
    wait_for("retries, reported", Duration::from_secs(10), || {
        queue.stats().error >= 2 && problems().contains_key(&component)
    })
    .await;
    assert!(
        problems()[&component].contains("does not exist"),
        "{:?}",
        problems()
    );
    assert_eq!(queue.stats().dropped, 0, "nothing dropped");
    let mut t1 = Box::pin(t1.committed());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut t1)
            .await
            .is_err(),
        "a ticket resolved while its table was missing"
    );

    // The table appears (the migration ran): the kept tokens are deleted.
    let fixture = include_str!("../fixtures/tokens.sql").replace("\"game_", &format!("\"{ghost}_"));
    tables.client.batch_execute(&fixture).await.unwrap();
    tables
        .client
        .execute(
            &format!("INSERT INTO \"{ghost}_gcm\" (token) VALUES ('t1')"),
            &[],
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        t1.await.unwrap();
        t2.committed().await.unwrap();
    })
    .await
    .expect("deleted once the table exists");
    wait_for("/healthz cleared", Duration::from_secs(5), || {
        !problems().contains_key(&component)
    })
    .await;
    drop(queue);
    let stats = deleter.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.success, stats.nonexistent, stats.dropped), (1, 1, 0));
    tables
        .client
        .batch_execute(&format!("DROP TABLE \"{ghost}_apns\", \"{ghost}_gcm\""))
        .await
        .unwrap();
    tables.drop_tables().await;
}

/// A trigger refuses one token (SQLSTATE P0001), as a data error refuses an untranslatable one
/// (22P05). Before, the whole batch was dropped and every message committed; now the batch is
/// split until the token refused on its own is found, and only that one is dropped.
#[tokio::test]
async fn a_token_postgresql_refuses_on_its_own_is_the_only_one_dropped() {
    let tables = Tables::create().await;
    tables
        .insert(Platform::Gcm, &["t1", "poison", "t2", "keep"])
        .await;
    let function = format!("\"{}_refuse\"", tables.app);
    tables
        .client
        .batch_execute(&format!(
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF OLD.token = 'poison' THEN RAISE EXCEPTION 'poison is kept'; END IF;
                 RETURN OLD;
             END $$;
             CREATE TRIGGER refuse BEFORE DELETE ON \"{}_gcm\"
                 FOR EACH ROW EXECUTE FUNCTION {function}();",
            tables.app
        ))
        .await
        .unwrap();
    let mut s = settings();
    s.batch_size = 3;
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), s);
    let queue = deleter.queue();
    let tickets = submit_all(&queue, &tables.app, Platform::Gcm, &["t1", "poison", "t2"]).await;
    let results = tokio::time::timeout(Duration::from_secs(10), async {
        let mut results = Vec::new();
        for ticket in tickets {
            results.push(ticket.committed().await);
        }
        results
    })
    .await
    .expect("every ticket answered");
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(TokenError::Permanent { message, .. }) if message.contains("poison is kept")),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    drop(queue);
    let stats = deleter.shutdown(Duration::from_secs(10)).await;
    assert_eq!(tables.tokens(Platform::Gcm).await, ["keep", "poison"]);
    assert_eq!((stats.success, stats.nonexistent, stats.dropped), (2, 0, 1));
    assert!(stats.error >= 2, "the batch and the token alone: {stats:?}");
    tables.drop_tables().await;
    tables_function_drop(&function).await;
}

async fn tables_function_drop(function: &str) {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={PG_PORT} user=postgres dbname=test"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP FUNCTION {function}()"))
        .await
        .unwrap();
}

/// Another session holds app a's table (an open transaction, VACUUM FULL, CREATE INDEX without
/// CONCURRENTLY): each DELETE of a's waits for the statement timeout and is cancelled (57014).
/// Before, the one worker retried a's batch forever and stopped reading its queue: every app's
/// deletions, and so their commits, stopped. Now only a's tokens wait.
#[tokio::test]
async fn a_locked_table_holds_up_only_its_own_app() {
    let a = Tables::create().await;
    let b = Tables::create().await;
    a.insert(Platform::Apns, &["la"]).await;
    b.insert(Platform::Apns, &["lb"]).await;
    let mut pg = pg_config(PG_PORT);
    pg.statement_timeout = Duration::from_millis(500);
    let deleter = TokenDeleter::spawn(pg_pool(&pg).unwrap(), settings());
    let queue = deleter.queue();
    a.client
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{}_apns\" IN ACCESS EXCLUSIVE MODE",
            a.app
        ))
        .await
        .unwrap();
    let ta = queue.submit(&a.app, Platform::Apns, "la").await.unwrap();
    wait_for("a's DELETE to time out", Duration::from_secs(10), || {
        queue.stats().error >= 1
    })
    .await;

    let tb = queue.submit(&b.app, Platform::Apns, "lb").await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), tb.committed())
        .await
        .expect("b's token is deleted while a's table is locked")
        .unwrap();
    assert!(b.tokens(Platform::Apns).await.is_empty());
    let mut ta = Box::pin(ta.committed());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut ta)
            .await
            .is_err(),
        "a's token waits for its table"
    );
    let component = format!("postgres tokens {}_apns", a.app);
    wait_for("/healthz to name a's table", Duration::from_secs(5), || {
        problems()
            .get(&component)
            .is_some_and(|p| p.contains("statement timeout"))
    })
    .await;

    a.client.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), ta)
        .await
        .expect("a's token is deleted once the lock is gone")
        .unwrap();
    assert!(a.tokens(Platform::Apns).await.is_empty());
    wait_for("/healthz cleared", Duration::from_secs(5), || {
        !problems().contains_key(&component)
    })
    .await;
    drop(queue);
    let stats = deleter.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.success, stats.dropped), (2, 0));
    assert!(stats.error >= 1);
    a.drop_tables().await;
    b.drop_tables().await;
}

/// A table whose token column changes type while the deleter runs (an ALTER in a migration)
/// still has its tokens deleted: the connection's cached statement is prepared again. Seen:
/// "cached plan must not change result type" on every retry, until the process restarted.
#[tokio::test]
async fn a_table_altered_while_running_still_has_its_tokens_deleted() {
    let tables = Tables::create().await;
    tables.insert(Platform::Apns, &["before", "after"]).await;
    let mut pg = pg_config(PG_PORT);
    pg.pool_size = 1; // one connection: its cached statement is the one that goes stale
    let deleter = TokenDeleter::spawn(pg_pool(&pg).unwrap(), settings());
    let queue = deleter.queue();
    let first = queue
        .submit(&tables.app, Platform::Apns, "before")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), first.committed())
        .await
        .expect("deleted")
        .unwrap();
    tables
        .client
        .batch_execute(&format!(
            "ALTER TABLE \"{}_apns\" ALTER COLUMN token TYPE varchar(300)",
            tables.app
        ))
        .await
        .unwrap();
    let second = queue
        .submit(&tables.app, Platform::Apns, "after")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), second.committed())
        .await
        .expect("deleted after the ALTER")
        .unwrap();
    assert!(tables.tokens(Platform::Apns).await.is_empty());
    drop(queue);
    deleter.shutdown(Duration::from_secs(5)).await;
    tables.drop_tables().await;
}

/// Each table's deletions reach Prometheus (`pusher_tokens_delete_total`) and StatsD (the
/// seed's `tokens_delete_*`); before, they were only logged at shutdown.
#[tokio::test]
async fn deletions_are_counted_in_prometheus_and_statsd() {
    // Installed before the table's first token (as `pusher run` serves /metrics first).
    let prometheus = pusher::telemetry::prometheus().unwrap();
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client =
        pusher::telemetry::statsd(&server.local_addr().unwrap().to_string(), "push").unwrap();
    let statsd = Arc::new(StatsdBatch::new(client));
    let tables = Tables::create().await;
    tables.insert(Platform::Apns, &["m1", "m2"]).await;
    let deleter = TokenDeleter::spawn_reporting(
        pg_pool(&pg_config(PG_PORT)).unwrap(),
        settings(),
        Some(statsd.clone()),
    );
    let queue = deleter.queue();
    for token in ["m1", "m2", "nope"] {
        queue
            .delete(&tables.app, Platform::Apns, token)
            .await
            .unwrap();
    }
    drop(queue);
    deleter.shutdown(Duration::from_secs(5)).await;

    let metrics = prometheus.render();
    let sample = |result: &str| -> Option<f64> {
        metrics
            .lines()
            .filter(|l| l.starts_with("pusher_tokens_delete_total{"))
            .filter(|l| l.contains(&format!("game=\"{}\"", tables.app)))
            .filter(|l| l.contains("platform=\"apns\""))
            .find(|l| l.contains(&format!("result=\"{result}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(sample("success"), Some(2.0), "{metrics}");
    assert_eq!(sample("nonexistent"), Some(1.0), "{metrics}");

    statsd.flush();
    drop(statsd); // the last handle: flushes the buffered sink
    let want = [
        format!(
            "push.tokens_delete_success:2|c|#platform:apns,game:{}",
            tables.app
        ),
        format!(
            "push.tokens_delete_nonexistent:1|c|#platform:apns,game:{}",
            tables.app
        ),
    ];
    let mut lines = Vec::new();
    let mut buf = [0u8; 65536];
    while !want.iter().all(|w| lines.contains(w)) {
        let n = server.recv(&mut buf).expect("the StatsD lines");
        lines.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string),
        );
    }
    tables.drop_tables().await;
}

/// A server that accepts connections and never answers (hung, or a black-holed proxy): the
/// DELETE waits on its connection. Before, shutdown waited for it past its deadline (without
/// end: only the TCP connect had a timeout); now it ends at the deadline.
#[tokio::test]
async fn shutdown_ends_at_its_deadline_while_postgresql_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU32::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        let mut silent = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            silent.push(stream);
        }
    });
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(port)).unwrap(), settings());
    let queue = deleter.queue();
    let ticket = queue.submit("game", Platform::Gcm, "hung").await.unwrap();
    wait_for("the DELETE's connection", Duration::from_secs(10), || {
        accepted.load(Ordering::Relaxed) > 0
    })
    .await;
    drop(queue);
    let started = Instant::now();
    let stats = tokio::time::timeout(
        Duration::from_secs(10),
        deleter.shutdown(Duration::from_millis(300)),
    )
    .await
    .expect("shutdown ends");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(stats.dropped, 1);
    let err = ticket.committed().await.unwrap_err();
    assert!(matches!(err, TokenError::Stopped), "{err}");
}

#[tokio::test]
async fn postgres_down_keeps_the_batch_and_delivers_it_when_back() {
    let tables = Tables::create().await;
    tables
        .insert(Platform::Apns, &["d1", "d2", "d3", "keep"])
        .await;
    let proxy = PgProxy::start(false).await;
    let port = proxy.port;

    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(port)).unwrap(), settings());
    let queue = deleter.queue();
    let mut tickets = submit_all(&queue, &tables.app, Platform::Apns, &["d1", "d2", "d3"]).await;
    wait_for("several failed attempts", Duration::from_secs(10), || {
        queue.stats().error >= 3
    })
    .await;
    // No acknowledgement while the DELETE has not committed.
    let first = tickets.remove(0);
    let mut first = Box::pin(first.committed());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut first)
            .await
            .is_err(),
        "a ticket resolved while PostgreSQL was down"
    );
    let stats = queue.stats();
    assert_eq!(
        (stats.success, stats.dropped),
        (0, 0),
        "nothing deleted, nothing lost"
    );
    assert_eq!(tables.tokens(Platform::Apns).await.len(), 4);

    proxy.up();
    wait_for(
        "the kept batch to be delivered",
        Duration::from_secs(10),
        || queue.stats().success == 3,
    )
    .await;
    assert_eq!(tables.tokens(Platform::Apns).await, ["keep"]);
    first.await.unwrap();
    for ticket in tickets {
        ticket.committed().await.unwrap();
    }
    assert!(proxy.refused() > 0);
    drop(queue);
    let stats = deleter.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.success, stats.nonexistent, stats.dropped), (3, 0, 0));
    tables.drop_tables().await;
}

#[tokio::test]
async fn closed_port_counts_errors_and_shutdown_deadline_reports_the_loss() {
    // A port with nothing listening: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(port)).unwrap(), settings());
    let queue = deleter.queue();
    let t1 = queue.submit("game", Platform::Gcm, "t1").await.unwrap();
    let t2 = queue.submit("game", Platform::Gcm, "t2").await.unwrap();
    wait_for("failed attempts", Duration::from_secs(10), || {
        queue.stats().error >= 2
    })
    .await;
    assert_eq!(queue.stats().dropped, 0, "the batch is kept while retrying");
    drop(queue);
    let stats = deleter.shutdown(Duration::from_millis(200)).await;
    assert_eq!(
        stats.dropped, 2,
        "given up only at the deadline, and counted"
    );
    assert_eq!(stats.success, 0);
    // The waiters learn the tokens were not deleted (their messages stay uncommitted).
    for ticket in [t1, t2] {
        let err = ticket.committed().await.unwrap_err();
        assert!(matches!(err, TokenError::Stopped), "{err}");
    }
}

#[tokio::test]
async fn a_full_queue_makes_submit_wait() {
    // PostgreSQL down: the worker holds one batch, the queue fills, then submit blocks.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = settings();
    s.batch_size = 1;
    s.queue_capacity = 2;
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(port)).unwrap(), s);
    let queue = deleter.queue();
    for i in 0..3 {
        queue
            .submit("game", Platform::Apns, &format!("t{i}"))
            .await
            .unwrap();
    }
    let blocked = tokio::time::timeout(
        Duration::from_millis(300),
        queue.submit("game", Platform::Apns, "t3"),
    )
    .await;
    assert!(
        blocked.is_err(),
        "submit should wait while the queue is full"
    );
    drop(queue);
    let stats = deleter.shutdown(Duration::from_millis(100)).await;
    assert_eq!(stats.dropped, 3);
}

/// PostgreSQL refuses a NUL in text (SQLSTATE 22021), which would fail the whole table's
/// batch: the other tokens' DELETEs would be dropped and their messages committed anyway.
#[tokio::test]
async fn a_token_with_a_nul_never_costs_the_others_their_deletion() {
    let tables = Tables::create().await;
    tables.insert(Platform::Gcm, &["t1", "t2", "keep"]).await;
    let mut s = settings();
    s.batch_size = 3;
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), s);
    let queue = deleter.queue();
    let tickets = submit_all(&queue, &tables.app, Platform::Gcm, &["t1", "t\u{0}3", "t2"]).await;
    for ticket in tickets {
        ticket.committed().await.unwrap();
    }
    drop(queue);
    let stats = deleter.shutdown(Duration::from_secs(10)).await;
    assert_eq!(tables.tokens(Platform::Gcm).await, ["keep"]);
    assert_eq!((stats.success, stats.nonexistent, stats.dropped), (2, 1, 0));
    tables.drop_tables().await;
}

/// A message task still waiting at a failing endpoint holds a queue clone: shutdown must
/// still end at its deadline (SIGTERM during an outage exits at once).
#[tokio::test]
async fn a_queue_clone_still_held_does_not_keep_shutdown_waiting() {
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), settings());
    let held = deleter.queue();
    let stats = tokio::time::timeout(
        Duration::from_secs(10),
        deleter.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("shutdown ends at its deadline");
    assert_eq!(stats, TokenStats::default());
    let refused = held.submit("game", Platform::Gcm, "late").await;
    assert!(matches!(refused, Err(TokenError::Stopped)), "{refused:?}");
}

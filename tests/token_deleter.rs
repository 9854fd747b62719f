//! The invalid-token deleter against the machine's PostgreSQL (127.0.0.1:5432, user postgres,
//! trust auth, database `test`). Each test makes its own uniquely named tables from
//! fixtures/tokens.sql and drops them.

#[path = "common/pg_proxy.rs"]
mod pg_proxy;

use pg_proxy::{PgProxy, PG_PORT};
use pusher::config::PgConfig;
use pusher::pipeline::tokens::{pg_pool, DeleterSettings, TokenDeleter, TokenError, TokenStats};
use pusher::push::Platform;
use std::sync::atomic::{AtomicU32, Ordering};
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

#[tokio::test]
async fn a_missing_table_is_a_permanent_error_not_an_endless_retry() {
    let tables = Tables::create().await;
    let deleter = TokenDeleter::spawn(pg_pool(&pg_config(PG_PORT)).unwrap(), settings());
    let queue = deleter.queue();
    let ghost = format!("{}-nosuchapp", tables.app);
    let t1 = queue.submit(&ghost, Platform::Gcm, "t1").await.unwrap();
    let t2 = queue.submit(&ghost, Platform::Gcm, "t2").await.unwrap();
    wait_for("the batch to be dropped", Duration::from_secs(10), || {
        queue.stats().dropped == 2
    })
    .await;
    assert_eq!(queue.stats().error, 1, "one attempt, no retries");
    // The waiters hear it is final (their messages finish: retrying cannot help).
    for ticket in [t1, t2] {
        let err = ticket.committed().await.unwrap_err();
        assert!(matches!(err, TokenError::Permanent { .. }), "{err}");
    }
    drop(queue);
    deleter.shutdown(Duration::from_secs(5)).await;
    tables.drop_tables().await;
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
    let mut tickets = Vec::new();
    for token in ["d1", "d2", "d3"] {
        tickets.push(
            queue
                .submit(&tables.app, Platform::Apns, token)
                .await
                .unwrap(),
        );
    }
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
    let mut tickets = Vec::new();
    for token in ["t1", "t\u{0}3", "t2"] {
        tickets.push(
            queue
                .submit(&tables.app, Platform::Gcm, token)
                .await
                .unwrap(),
        );
    }
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

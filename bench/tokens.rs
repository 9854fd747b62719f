//! Invalid-token deletion throughput into the machine's PostgreSQL (127.0.0.1:5432, user
//! postgres, database test). Goal (issue 4): >= 20,000 tokens/s; the seed managed ~10/s.
//!
//! Each iteration fills a fresh table (fixtures/tokens.sql schema, plus an index on token as a
//! deployment deleting at volume would have) with TOKENS rows, then times submitting every
//! token and waiting for every ticket (as the pipeline does: a message finishes only when its
//! token's DELETE committed): submit -> batch -> DELETE -> commit acknowledged -> counted.
//! Only that part is timed. `cargo bench --bench tokens`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pusher::config::PgConfig;
use pusher::pipeline::tokens::{pg_pool, DeleterSettings, TokenDeleter};
use pusher::push::Platform;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const TOKENS: usize = 20_000;
const APP: &str = "benchtokens";

fn pg() -> PgConfig {
    PgConfig {
        user: "postgres".to_owned(),
        pass: None,
        host: "127.0.0.1".to_owned(),
        database: "test".to_owned(),
        port: 5432,
        pool_size: 4,
        connection_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(30),
    }
}

fn token(i: usize) -> String {
    format!("{i:064x}")
}

async fn setup(client: &tokio_postgres::Client) {
    let schema = include_str!("../fixtures/tokens.sql").replace("\"game_", &format!("\"{APP}_"));
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{APP}_apns\", \"{APP}_gcm\"; {schema} CREATE INDEX ON \"{APP}_apns\" (token);"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
}

async fn fill(client: &tokio_postgres::Client) {
    let tokens: Vec<String> = (0..TOKENS).map(token).collect();
    let sql = format!("INSERT INTO \"{APP}_apns\" (user_id, token) SELECT 'u', unnest($1::text[])");
    client.execute(&sql, &[&tokens]).await.expect("insert");
    client
        .batch_execute(&format!("ANALYZE \"{APP}_apns\""))
        .await
        .expect("analyze");
}

fn bench_delete(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", NoTls)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, database test)");
        tokio::spawn(conn);
        setup(&client).await;
        client
    });
    let mut group = c.benchmark_group("token_deleter");
    group.throughput(Throughput::Elements(TOKENS as u64));
    group.sample_size(10);
    group.bench_function("delete_20k_tokens", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fill(&client).await;
                    let pool = pg_pool(&pg()).expect("pool");
                    let started = Instant::now();
                    let deleter = TokenDeleter::spawn(pool, DeleterSettings::default());
                    let queue = deleter.queue();
                    let mut tickets = Vec::with_capacity(TOKENS);
                    for i in 0..TOKENS {
                        tickets.push(
                            queue
                                .submit(APP, Platform::Apns, &token(i))
                                .await
                                .expect("submit"),
                        );
                    }
                    // Awaited together: one wake-up per batch of acks, not one per token.
                    let acks =
                        futures_util::future::join_all(tickets.into_iter().map(|t| t.committed()))
                            .await;
                    assert!(acks.iter().all(Result::is_ok), "every token deleted");
                    drop(queue);
                    let stats = deleter.shutdown(Duration::from_secs(60)).await;
                    total += started.elapsed();
                    assert_eq!(
                        stats.success, TOKENS as u64,
                        "every token deleted: {stats:?}"
                    );
                }
                total
            })
        })
    });
    group.finish();
    rt.block_on(async {
        let _ = client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{APP}_apns\", \"{APP}_gcm\""
            ))
            .await;
    });
}

criterion_group!(benches, bench_delete);
criterion_main!(benches);

//! `pusher api`: load the config, create the platform's tables, serve the HTTP API until
//! SIGINT/SIGTERM (requests in progress get `SHUTDOWN_GRACE` to be answered, the writes they
//! started end, records in flight are flushed).

use super::flags::{BrokersFlag, ThreadsFlag};
use crate::platform::api::{serve, ApiSettings, ApiState};
use crate::platform::produce::Producer;
use crate::platform::store::Store;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Config file [default: ./config/default.yaml when it exists, else built-in defaults].
    /// The API uses `api.*`, `queue.brokers` and the `invalidToken.pg` database.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (api.listen).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub brokers: BrokersFlag,
    /// Create the platform's tables in PostgreSQL and exit (they are also created at start).
    #[arg(long)]
    pub init_db: bool,
    /// Also run `pusher route` and `pusher results` in this process: the whole platform in
    /// one command, for trying it (in production, run them as their own processes).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub threads: ThreadsFlag,
}

pub fn run(args: ApiArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(b) = &args.brokers.brokers {
        overrides.push(("queue.brokers".to_owned(), b.clone()));
        overrides.push(("feedback.kafka.brokers".to_owned(), b.clone()));
    }
    if let Some(l) = &args.listen {
        overrides.push(("api.listen".to_owned(), l.clone()));
    }
    let config = super::run::load_config(args.config.as_deref(), &overrides)?;
    let settings = ApiSettings::from_config(&config);
    if settings.keys.is_empty() && !args.init_db {
        bail!(
            "api.keys: no API key configured, so nobody could call the API \
             (api.keys.<name>.app and .key, or PUSHER_API_KEYS_<NAME>_APP / _KEY)"
        );
    }
    let store = Store::new(&config.invalid_token.pg)?;
    let runtime = crate::runtime::build(args.threads.threads, "pusher-api")
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        store
            .init()
            .await
            .context("cannot create the platform's tables (invalidToken.pg)")?;
        if args.init_db {
            println!("platform tables ready");
            return anyhow::Ok(());
        }
        // Installed before the first request, not at the first scrape of `/metrics`:
        // what is counted before a recorder exists is lost.
        crate::telemetry::prometheus()?;
        let producer = Producer::new(&config.queue.brokers, settings.produce_timeout)?;
        let state = ApiState::new(settings, producer, store.clone());
        let listener = tokio::net::TcpListener::bind(&config.api.listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {}", config.api.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, brokers = %config.queue.brokers, "Serving the API.");
        // Watched before the address line: a script that reads it and stops the API at once
        // gets a clean stop.
        let stop = CancellationToken::new();
        super::cancel_on_signal(stop.clone())?;
        // The address on stdout too, for scripts that started it on port 0.
        println!("listening on http://{addr}");
        let mut others = Vec::new();
        if args.all {
            let route = crate::platform::route::run(
                route_settings(&config),
                crate::platform::registry::Registry::new(store.pool()),
                Producer::new(&config.queue.brokers, config.api.produce_timeout)?,
                stop.clone(),
            );
            let webhooks = webhooks(&config)?;
            let results = crate::platform::results::run(
                results_settings(&config),
                store,
                webhooks,
                stop.clone(),
            );
            others.push(tokio::spawn(async move {
                let counts = route.await?;
                tracing::info!(counts = %crate::telemetry::Json(&counts), "Route stopped.");
                anyhow::Ok(())
            }));
            others.push(tokio::spawn(async move {
                let counts = results.await?;
                tracing::info!(counts = %crate::telemetry::Json(&counts), "Results stopped.");
                anyhow::Ok(())
            }));
        }
        serve(listener, state.clone(), stop).await?;
        state.flush(Duration::from_secs(10));
        for task in others {
            task.await??;
        }
        tracing::info!("Stopped.");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// Config file [default: ./config/default.yaml when it exists, else built-in defaults].
    /// The router uses `route.*`, `queue.brokers`, `api.produceTimeout` and the
    /// `invalidToken.pg` database; a new group starts at the earliest request.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub brokers: BrokersFlag,
    #[command(flatten)]
    pub threads: ThreadsFlag,
}

/// `pusher route`: until SIGINT/SIGTERM; the batch in progress is finished and committed.
pub fn route(args: RouteArgs) -> anyhow::Result<ExitCode> {
    use crate::platform::registry::Registry;
    let flags = (args.config.as_deref(), &args.brokers, &args.threads);
    consume(
        flags,
        "queue.brokers",
        ("pusher-route", "route.listen", |c| &c.route.listen),
        |config, store, stop| async move {
            let settings = route_settings(&config);
            let producer = Producer::new(&config.queue.brokers, config.api.produce_timeout)?;
            tracing::info!(group = %settings.group, brokers = %settings.brokers, "Routing requests.");
            let registry = Registry::new(store.pool());
            Ok(crate::platform::route::run(settings, registry, producer, stop).await?)
        },
    )
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Config file [default: ./config/default.yaml when it exists, else built-in defaults].
    /// Uses `results.*`, `feedback.kafka` (brokers and topic template) and the
    /// `invalidToken.pg` database; a new group starts at the earliest record.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub brokers: BrokersFlag,
    #[command(flatten)]
    pub threads: ThreadsFlag,
}

/// `pusher results`: until SIGINT/SIGTERM; the batch in progress is finished and committed.
pub fn results(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let flags = (args.config.as_deref(), &args.brokers, &args.threads);
    consume(
        flags,
        "feedback.kafka.brokers",
        ("pusher-results", "results.listen", |c| &c.results.listen),
        |config, store, stop| async move {
            let settings = results_settings(&config);
            tracing::info!(group = %settings.group, topics = %settings.topic, "Storing results.");
            let webhooks = webhooks(&config)?;
            Ok(crate::platform::results::run(settings, store, webhooks, stop).await?)
        },
    )
}

/// What `pusher route` and `pusher results` share: the config (`--brokers` sets
/// `brokers_key`), the platform's tables, a runtime named `name`, `/metrics` and `/healthz` on
/// the address of `listen_key`, and `work` until SIGINT/SIGTERM, whose counts are printed as
/// one JSON line.
fn consume<F, Fut, C>(
    (config, brokers, threads): (Option<&std::path::Path>, &BrokersFlag, &ThreadsFlag),
    brokers_key: &str,
    (name, listen_key, listen): (&str, &'static str, fn(&crate::config::Config) -> &String),
    work: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(crate::config::Validated, Store, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<C>>,
    C: serde::Serialize,
{
    let overrides: Vec<(String, String)> = brokers
        .brokers
        .iter()
        .map(|b| (brokers_key.to_owned(), b.clone()))
        .collect();
    let config = super::run::load_config(config, &overrides)?;
    let store = Store::new(&config.invalid_token.pg)?;
    let runtime =
        crate::runtime::build(threads.threads, name).context("cannot start the async runtime")?;
    runtime.block_on(async {
        store
            .init()
            .await
            .context("cannot create the platform's tables (invalidToken.pg)")?;
        let stop = CancellationToken::new();
        super::cancel_on_signal(stop.clone())?;
        super::serve_metrics(listen_key, listen(&config), &config).await?;
        let counts = work(config, store, stop).await?;
        println!("{}", serde_json::to_string(&counts)?);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn route_settings(config: &crate::config::Config) -> crate::platform::route::RouteSettings {
    crate::platform::route::RouteSettings {
        brokers: config.queue.brokers.clone(),
        group: config.route.group.clone(),
        deeplink_base: config.route.deeplink_base.clone(),
        batch_size: config.route.batch_size,
        // Not queue.offsetResetStrategy (latest by default, as the seed's pusher): a new group
        // must not skip what the API already accepted.
        offset_reset: "earliest".to_owned(),
        events: crate::platform::events::EventSettings {
            default_language: config.route.default_language,
            deeplink_base: config.route.deeplink_base.clone(),
            feedback_template: config.feedback.kafka.topic_template().to_owned(),
            limits: config
                .route
                .limits
                .iter()
                .map(|(app, l)| (app.clone(), device_limits(l)))
                .collect(),
            default_limits: config
                .route
                .limits
                .get("default")
                .map(device_limits)
                .unwrap_or_default(),
        },
        membership: Default::default(),
        consumer_extra: Vec::new(),
    }
}

fn device_limits(l: &crate::config::DeviceLimitsConfig) -> crate::platform::events::DeviceLimits {
    crate::platform::events::DeviceLimits {
        limit: (l.per_device > 0).then_some(crate::platform::claims::Limit {
            count: l.per_device,
            window_s: l.window.as_secs_f64(),
        }),
        dedup_window_s: l.dedup_window.as_secs_f64(),
    }
}

fn results_settings(config: &crate::config::Config) -> crate::platform::consume::GroupSettings {
    crate::platform::consume::GroupSettings {
        brokers: config.feedback.kafka.brokers.clone(),
        group: config.results.group.clone(),
        topic: crate::platform::results::feedback_pattern(config.feedback.kafka.topic_template()),
        batch_size: config.results.batch_size,
        // A new group must not skip verdicts already reported.
        offset_reset: "earliest".to_owned(),
        consumer_extra: Vec::new(),
    }
}

/// The results webhooks of the config (their URLs are secrets there).
fn webhooks(config: &crate::config::Config) -> anyhow::Result<crate::platform::webhook::Webhooks> {
    let urls = config
        .results
        .webhooks
        .iter()
        .map(|(app, url)| (app.clone(), url.expose().to_owned()))
        .collect();
    Ok(crate::platform::webhook::Webhooks::new(&urls)?)
}

#![allow(clippy::unwrap_used)]

use super::env::{classify, env_name, EnvKey};
use super::keys::{Keys, Kind, ANY};
use super::*;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<Vec<_>>()
        .into_iter()
}

fn yaml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn from_yaml(text: &str) -> Result<Config, ConfigError> {
    Config::load_yaml(text, "t.yaml", env(&[]), &[])
}

fn from_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_with(None, env(pairs), &[])
}

#[test]
fn defaults_validate() {
    let c = from_env(&[]).unwrap();
    assert_eq!(c.queue.brokers, "localhost:9092");
    assert_eq!(
        c.feedback.kafka.topic_template(),
        "push-{app}-{platform}-feedbacks"
    );
    c.validate().unwrap();
}

#[test]
fn shipped_default_yaml_loads_validates_and_matches_the_built_in_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.yaml");
    let c = Config::load(&path, env(&[])).unwrap();
    assert!(c.seed_keys.is_empty(), "{:?}", c.seed_keys);
    // The documented file and the built-in defaults say the same.
    assert_eq!(
        serde_yaml_ng::to_value(&c).unwrap(),
        serde_yaml_ng::to_value(Config::default()).unwrap()
    );
    c.validate().unwrap();
}

#[test]
fn precedence_defaults_file_env_cli() {
    let f = yaml_file("queue:\n  brokers: file:1\n  group: file-group\n  sessionTimeout: 7000\n");
    let c = Config::load_with(
        Some(f.path()),
        env(&[
            ("PUSHER_QUEUE_GROUP", "env-group"),
            ("PUSHER_QUEUE_SESSIONTIMEOUT", "8000"),
        ]),
        &[("queue.sessionTimeout".to_owned(), "9000".to_owned())],
    )
    .unwrap();
    assert_eq!(c.queue.brokers, "file:1", "file beats default");
    assert_eq!(
        c.queue.group.as_deref(),
        Some("env-group"),
        "env beats file"
    );
    assert_eq!(
        c.queue.session_timeout,
        Duration::from_millis(9000),
        "CLI beats env"
    );
    assert_eq!(
        c.queue.offset_reset_strategy,
        OffsetReset::Latest,
        "default kept"
    );
}

/// Every key of the schema has its environment name, derived from the key.
#[test]
fn every_key_has_its_env_name() {
    let keys = Keys::new().unwrap();
    let leaves = keys.leaves();
    assert!(leaves.len() > 35, "{leaves:?}");
    for leaf in &leaves {
        let path: Vec<String> = leaf
            .path
            .iter()
            .map(|s| if s == ANY { "my_app".into() } else { s.clone() })
            .collect();
        let name = env_name(&path);
        assert_eq!(
            classify(&keys, &name).unwrap(),
            EnvKey::Key(path.clone(), leaf.kind),
            "{name}"
        );
    }
    // Kinds come from the defaults: durations and optional keys are text.
    let kind = |key: &str| keys.lookup(key).unwrap().1;
    assert_eq!(kind("inFlight"), Kind::Number);
    assert_eq!(kind("queue.topics"), Kind::List);
    assert_eq!(kind("queue.handleAllMessagesBeforeExiting"), Kind::Bool);
    assert_eq!(kind("stats.logInterval"), Kind::Text);
    assert_eq!(kind("queue.group"), Kind::Text);
    assert_eq!(kind("apns.certs.game.keyID"), Kind::Text);
}

/// The seed's names (DESIGN.md §7) keep working, its odd spelling included.
#[test]
fn the_seeds_env_names_are_understood() {
    let keys = Keys::new().unwrap();
    for name in [
        "PUSHER_QUEUE_TOPICS",
        "PUSHER_QUEUE_BROKERS",
        "PUSHER_QUEUE_GROUP",
        "PUSHER_QUEUE_SESSIONTIMEOUT",
        "PUSHER_QUEUE_OFFSETRESETSTRATEGY",
        "PUSHER_QUEUE_HANDLEALLMESSAGESBEFOREEXITING",
        "PUSHER_GCM_APPS",
        "PUSHER_APNS_APPS",
        "PUSHER_APNS_CERTS_GAME_AUTHKEYPATH",
        "PUSHER_GCM_CERTS_GAME_APIKEY",
        "PUSHER_FEEDBACK_REPORTERS",
        "PUSHER_FEEDBACK_KAFKA_TOPICS",
        "PUSHER_FEEDBACK_KAFKA_BROKERS",
        "PUSHER_STATS_REPORTERS",
        "PUSHER_STATS_STATSD_HOST",
        "PUSHER_STATS_STATSD_PREFIX",
        "PUSHER_STATS_STATSD_FLUSHINTERVALINMS",
        "PUSHER_INVALIDTOKEN_HANDLERS",
        "PUSHER_INVALIDTOKEN_PG_USER",
        "PUSHER_INVALIDTOKEN_PG_PASS",
        "PUSHER_INVALIDTOKEN_PG_HOST",
        "PUSHER_INVALIDTOKEN_PG_DATABASE",
        "PUSHER_INVALIDTOKEN_PG_PORT",
        "PUSHER_INVALIDTOKEN_PG_POOLSIZE",
        "PUSHER_INVALIDTOKEN_PG_CONNECTIONTIMEOUT",
        "PUSHER_GRACEFULLSHUTDOWNTIMEOUT",
        "PUSHER_SENTRY_URL",
    ] {
        assert!(
            matches!(classify(&keys, name).unwrap(), EnvKey::Key(..)),
            "{name}"
        );
    }
    // Accepted and ignored, with a warning.
    for name in [
        "PUSHER_INVALIDTOKEN_PG_MAXRETRIES",
        "PUSHER_APNS_CONCURRENTWORKERS",
        "PUSHER_GCM_CONCURRENTWORKERS",
        "PUSHER_GCM_MAXPENDINGMESSAGES",
    ] {
        assert!(
            matches!(classify(&keys, name).unwrap(), EnvKey::Seed(_)),
            "{name}"
        );
    }
    assert_eq!(
        classify(&keys, "PUSHER_GRACEFULLSHUTDOWNTIMEOUT").unwrap(),
        EnvKey::Key(vec!["gracefulShutdownTimeout".into()], Kind::Text)
    );
    let names = Config::env_names().unwrap();
    assert!(names.contains(&"PUSHER_STATS_LOGINTERVAL".to_owned()));
    assert!(names.contains(&"PUSHER_GRACEFULLSHUTDOWNTIMEOUT".to_owned()));
}

#[test]
fn other_pusher_variables_are_left_alone() {
    let others = [
        "PUSHER_LOG",
        "PUSHER_TEST_KAFKA",
        "PUSHER_SKIP_BROWSER",
        "PUSHER_BENCH_API_KEY",
        "PUSHER_REPLAY_API_KEY",
        "PUSHER_MOCK_ADMIN_TOKEN",
        "PUSHER_APNS_CERTIFICATE_PASSWORD",
        "PUSHER_GCM_API_KEY",
        "PUSHER_CHAOS_SEED",
        "PUSHER_SOAK_BIN",
        "PUSHER_BIN",
        "PUSHER_CI_CACHE",
        "PUSHER_KEEP_PNG",
    ];
    let pairs: Vec<(&str, &str)> = others.iter().map(|n| (*n, "x")).collect();
    let c = from_env(&pairs).unwrap();
    assert!(c.seed_keys.is_empty());
    let c = from_env(&[("PUSHER_SENTRY_URL", "https://k@sentry.example/1")]).unwrap();
    assert!(c.sentry.url.is_some());
}

/// Each bad config and the exact error it gives.
#[test]
fn unknown_keys_name_the_nearest_valid_key() {
    let file_cases = [
        (
            "inFligth: 10\n",
            "config file t.yaml: inFligth: unknown key; did you mean inFlight?",
        ),
        (
            "queue:\n  brokrs: k:9092\n",
            "config file t.yaml: queue.brokrs: unknown key; did you mean brokers?",
        ),
        (
            "apns:\n  certs:\n    game:\n      keyId: ABC\n",
            "config file t.yaml: apns.certs.game.keyId: unknown key; did you mean keyID?",
        ),
        (
            "gcm:\n  certs:\n    g:\n      senderId: \"1\"\n",
            "config file t.yaml: gcm.certs.g.senderId: unknown key; did you mean senderID?",
        ),
        (
            "apns:\n  retry:\n    maxRetryAtempts: 2\n",
            "config file t.yaml: apns.retry.maxRetryAtempts: unknown key; did you mean maxRetryAttempts?",
        ),
        (
            "stats:\n  loginterval: 5s\n",
            "config file t.yaml: stats.loginterval: unknown key; did you mean logInterval?",
        ),
        (
            "Queue:\n  brokers: k:9092\n",
            "config file t.yaml: Queue: unknown key; did you mean queue?",
        ),
        (
            "zzz: 1\n",
            "config file t.yaml: zzz: unknown key (valid here: queue, apns, gcm, webpush, feedback, stats, \
             invalidToken, gracefulShutdownTimeout, inFlight, sentry, api, route, results)",
        ),
        (
            "log:\n  levl: debug\n",
            "config file t.yaml: log.levl: unknown key; did you mean level?",
        ),
    ];
    for (yaml, expected) in file_cases {
        let err = from_yaml(yaml).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{yaml}");
        assert_eq!(err.to_string(), expected, "{yaml}");
    }
    let env_cases = [
        (
            "PUSHER_QUEUE_BROKER",
            "PUSHER_QUEUE_BROKER: unknown key; did you mean PUSHER_QUEUE_BROKERS?",
        ),
        (
            "PUSHER_QUEU_BROKERS",
            "PUSHER_QUEU_BROKERS: unknown key; did you mean PUSHER_QUEUE_BROKERS?",
        ),
        (
            "PUSHER_INFLIGTH",
            "PUSHER_INFLIGTH: unknown key; did you mean PUSHER_INFLIGHT?",
        ),
        (
            "PUSHER_APNS_CERTS_GAME_KEY_ID",
            "PUSHER_APNS_CERTS_GAME_KEY_ID: unknown key; did you mean PUSHER_APNS_CERTS_GAME_KEYID?",
        ),
        (
            "PUSHER_SENTRY_DSN",
            "PUSHER_SENTRY_DSN: unknown key; did you mean PUSHER_SENTRY_URL?",
        ),
        (
            "PUSHER_GCM_FIREBASECREDENTIALS_",
            "PUSHER_GCM_FIREBASECREDENTIALS_: unknown key (valid here: PUSHER_GCM_APPS, \
             PUSHER_GCM_ENDPOINT)",
        ),
        (
            "PUSHER_SENTRY_ENVIRONMENT",
            "PUSHER_SENTRY_ENVIRONMENT: unknown key (valid here: PUSHER_SENTRY_URL)",
        ),
    ];
    for (name, expected) in env_cases {
        let err = from_env(&[(name, "x")]).unwrap_err();
        assert_eq!(err.to_string(), expected, "{name}");
    }
    let err = Config::load_with(
        None,
        env(&[]),
        &[("queue.brokres".to_owned(), "1".to_owned())],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "queue.brokres: unknown key; did you mean queue.brokers?"
    );
}

#[test]
fn durations_take_units_and_bare_numbers_keep_the_seeds_unit() {
    type Get = fn(&Config) -> Duration;
    let cases: [(&str, &str, Get, u64, Duration); 8] = [
        (
            "gracefulShutdownTimeout",
            "PUSHER_GRACEFULLSHUTDOWNTIMEOUT",
            |c| c.graceful_shutdown_timeout,
            12,
            Duration::from_secs(12),
        ),
        (
            "queue.sessionTimeout",
            "PUSHER_QUEUE_SESSIONTIMEOUT",
            |c| c.queue.session_timeout,
            7000,
            Duration::from_millis(7000),
        ),
        (
            "invalidToken.pg.connectionTimeout",
            "PUSHER_INVALIDTOKEN_PG_CONNECTIONTIMEOUT",
            |c| c.invalid_token.pg.connection_timeout,
            250,
            Duration::from_millis(250),
        ),
        (
            "invalidToken.pg.statementTimeout",
            "PUSHER_INVALIDTOKEN_PG_STATEMENTTIMEOUT",
            |c| c.invalid_token.pg.statement_timeout,
            1500,
            Duration::from_millis(1500),
        ),
        (
            "invalidToken.batch.intervalMs",
            "PUSHER_INVALIDTOKEN_BATCH_INTERVALMS",
            |c| c.invalid_token.batch.interval,
            40,
            Duration::from_millis(40),
        ),
        (
            "stats.statsd.flushIntervalInMs",
            "PUSHER_STATS_STATSD_FLUSHINTERVALINMS",
            |c| c.stats.statsd.flush_interval,
            100,
            Duration::from_millis(100),
        ),
        (
            "apns.retry.interval",
            "PUSHER_APNS_RETRY_INTERVAL",
            |c| c.apns.retry.interval,
            500,
            Duration::from_millis(500),
        ),
        (
            "stats.logInterval",
            "PUSHER_STATS_LOGINTERVAL",
            |c| c.stats.log_interval,
            5,
            Duration::from_secs(5),
        ),
    ];
    for (key, name, get, bare, expected) in cases {
        // As YAML, nested from the dotted key.
        let yaml = |value: &str| {
            let parts: Vec<&str> = key.split('.').collect();
            let mut text = String::new();
            for (depth, part) in parts.iter().enumerate() {
                text.push_str(&"  ".repeat(depth));
                text.push_str(part);
                text.push(':');
                text.push(if depth + 1 == parts.len() { ' ' } else { '\n' });
            }
            text.push_str(value);
            text.push('\n');
            from_yaml(&text).unwrap_or_else(|e| panic!("{key}: {value}: {e}"))
        };
        assert_eq!(get(&yaml(&bare.to_string())), expected, "{key}: {bare}");
        assert_eq!(get(&yaml("\"2m\"")), Duration::from_secs(120), "{key}");
        assert_eq!(get(&yaml("1500ms")), Duration::from_millis(1500), "{key}");
        assert_eq!(get(&yaml("30s")), Duration::from_secs(30), "{key}");
        let from_env = |value: &str| {
            get(&from_env(&[(name, value)]).unwrap_or_else(|e| panic!("{name}={value}: {e}")))
        };
        assert_eq!(from_env(&bare.to_string()), expected, "{name}={bare}");
        assert_eq!(from_env("250ms"), Duration::from_millis(250), "{name}");
        assert_eq!(from_env(" 5m "), Duration::from_secs(300), "{name}");
    }
    assert_eq!(
        from_yaml("stats:\n  logInterval: 0\n")
            .unwrap()
            .stats
            .log_interval,
        Duration::ZERO,
        "0 turns the status line off"
    );
    assert_eq!(
        from_env(&[("PUSHER_QUEUE_SESSIONTIMEOUT", "soon")])
            .unwrap_err()
            .to_string(),
        "PUSHER_QUEUE_SESSIONTIMEOUT: \"soon\" is not a duration like \"30s\" or \"250ms\", \
         or a number of milliseconds (expected number at 0)"
    );
    assert_eq!(
        from_yaml("gracefulShutdownTimeout: -3\n")
            .unwrap_err()
            .to_string(),
        "config file t.yaml: gracefulShutdownTimeout: -3 is negative: not a duration"
    );
    assert_eq!(
        from_yaml("gracefulShutdownTimeout: 0s\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string(),
        "gracefulShutdownTimeout: must be > 0"
    );
}

/// A config written for the seed loads: its keys that do nothing here are listed (the pusher
/// warns once with the list) and change nothing.
#[test]
fn seed_keys_are_accepted_ignored_and_listed() {
    let seed = "\
gracefulShutdownTimeout: 30
apns:
  concurrentWorkers: 300
  connectionPoolSize: 1
  logStatsInterval: 10000
  apps: game
  certs:
    game:
      keyID: ABC123DEFG
      teamID: ABC123DEFG
      topic: com.game.test
gcm:
  pingInterval: 30
  pingTimeout: 10
  maxPendingMessages: 100
  concurrentWorkers: 10
  logStatsInterval: 10000
queue:
  topics:
    - \"^push-[^-_]+_(apns|gcm)[_-](single|massive)\"
  brokers: localhost:9941
  group: testGroup
  sessionTimeout: 6000
  offsetResetStrategy: latest
  handleAllMessagesBeforeExiting: true
  channelSize: 100
feedback:
  reporters:
    - kafka
  kafka:
    topics: push-test_apns-feedbacks
    brokers: localhost:9941
  cache:
    requestTimeout: 1800000
    cleaningInterval: 300000
stats:
  reporters:
    - statsd
  flush:
    s: 5
  statsd:
    host: localhost:8125
    prefix: push
    buflen: 1
invalidToken:
  pg:
    table: test_apns
    host: localhost
    port: 8585
    maxRetries: 3
    connectionTimeout: 100
feedbackListeners:
  queue:
    fetch.min.bytes: 1
  invalidToken:
    flush:
      time:
        ms: 2000
log:
  level: info
";
    let c = Config::load_yaml(
        seed,
        "seed.yaml",
        env(&[("PUSHER_APNS_CONCURRENTWORKERS", "lots")]),
        &[],
    )
    .unwrap();
    let listed: Vec<&str> = c.seed_keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        listed,
        [
            "apns.concurrentWorkers",
            "apns.logStatsInterval",
            "gcm.pingInterval",
            "gcm.pingTimeout",
            "gcm.maxPendingMessages",
            "gcm.concurrentWorkers",
            "gcm.logStatsInterval",
            "queue.channelSize",
            "feedback.cache",
            "stats.flush",
            "stats.statsd.buflen",
            "invalidToken.pg.table",
            "invalidToken.pg.maxRetries",
            "feedbackListeners",
            "log.level",
            "PUSHER_APNS_CONCURRENTWORKERS",
        ]
    );
    let workers = &c.seed_keys[0];
    assert_eq!(workers.now, "inFlight bounds concurrency");
    // The rest of the tree took effect.
    assert_eq!(c.queue.brokers, "localhost:9941");
    assert_eq!(c.invalid_token.pg.port, 8585);
    assert_eq!(
        c.invalid_token.pg.connection_timeout,
        Duration::from_millis(100)
    );
    assert_eq!(c.in_flight, Config::default().in_flight);
    // A new config has none.
    assert!(from_yaml("inFlight: 5\n").unwrap().seed_keys.is_empty());
}

#[test]
fn reporters_handlers_and_strategies_are_enums() {
    let c = from_env(&[
        ("PUSHER_STATS_REPORTERS", "statsd, prometheus"),
        ("PUSHER_FEEDBACK_REPORTERS", ""),
        ("PUSHER_INVALIDTOKEN_HANDLERS", "pg"),
    ])
    .unwrap();
    assert_eq!(
        c.stats.reporters,
        [StatsReporter::Statsd, StatsReporter::Prometheus]
    );
    assert!(c.feedback.reporters.is_empty());
    assert_eq!(c.invalid_token.handlers, [TokenHandler::Pg]);
    for (given, strategy) in [
        ("earliest", OffsetReset::Earliest),
        ("smallest", OffsetReset::Earliest),
        ("beginning", OffsetReset::Earliest),
        ("latest", OffsetReset::Latest),
        ("largest", OffsetReset::Latest),
        ("end", OffsetReset::Latest),
        ("error", OffsetReset::Error),
    ] {
        let c = from_yaml(&format!("queue:\n  offsetResetStrategy: {given}\n")).unwrap();
        assert_eq!(c.queue.offset_reset_strategy, strategy, "{given}");
    }
    assert_eq!(OffsetReset::Earliest.as_str(), "earliest");
    assert_eq!(
        from_env(&[("PUSHER_QUEUE_OFFSETRESETSTRATEGY", "sideways")])
            .unwrap_err()
            .to_string(),
        "PUSHER_QUEUE_OFFSETRESETSTRATEGY: unknown variant `sideways`, expected one of \
         `beginning`, `earliest`, `smallest`, `end`, `largest`, `latest`, `error`"
    );
    assert_eq!(
        from_env(&[("PUSHER_STATS_REPORTERS", "statsd,graphite")])
            .unwrap_err()
            .to_string(),
        "PUSHER_STATS_REPORTERS: unknown variant `graphite`, expected `statsd` or `prometheus`"
    );
    assert_eq!(
        from_yaml("feedback:\n  reporters: [kafka, sqs]\n")
            .unwrap_err()
            .to_string(),
        "config file t.yaml: feedback.reporters: unknown variant `sqs`, expected `kafka`"
    );
}

#[test]
fn yaml_merge_keys_are_applied_before_the_check() {
    let c = from_yaml(
        "apns:\n  certs:\n    game: &cert\n      keyID: K\n      teamID: T\n    other:\n      <<: *cert\n      topic: x\n",
    )
    .unwrap();
    assert_eq!(c.apns.certs["other"].key_id.as_deref(), Some("K"));
    assert_eq!(c.apns.certs["other"].topic.as_deref(), Some("x"));
}

#[test]
fn env_values_reach_the_config() {
    let c = from_env(&[
        ("PUSHER_QUEUE_TOPICS", "push-a_apns, push-b_gcm"),
        ("PUSHER_QUEUE_BROKERS", "k1:9092,k2:9092"),
        ("PUSHER_QUEUE_HANDLEALLMESSAGESBEFOREEXITING", "false"),
        ("PUSHER_APNS_APPS", "game,my_app"),
        ("PUSHER_APNS_CERTS_MY_APP_AUTHKEYPATH", "/keys/k.p8"),
        ("PUSHER_APNS_CERTS_MY_APP_KEYID", "ABC"),
        ("PUSHER_APNS_CERTS_GAME_PASSWORD", "hunter2"),
        ("PUSHER_GCM_APPS", "g1"),
        ("PUSHER_GCM_CERTS_G1_APIKEY", "AIzaSecret"),
        ("PUSHER_GCM_CERTS_G1_SENDERID", "123"),
        (
            "PUSHER_GCM_FIREBASECREDENTIALS_G1",
            "{\"private_key\":\"x\"}",
        ),
        ("PUSHER_GCM_MAXPENDINGMESSAGES", "50"),
        ("PUSHER_FEEDBACK_REPORTERS", ""),
        ("PUSHER_FEEDBACK_KAFKA_TOPICS", "fb-{app}-{platform}"),
        ("PUSHER_FEEDBACK_KAFKA_BROKERS", "fb:9092"),
        ("PUSHER_STATS_REPORTERS", "statsd,prometheus"),
        ("PUSHER_STATS_STATSD_HOST", "stats:8125"),
        ("PUSHER_STATS_STATSD_PREFIX", "p."),
        ("PUSHER_STATS_STATSD_FLUSHINTERVALINMS", "100"),
        ("PUSHER_STATS_LOGINTERVAL", "1m"),
        ("PUSHER_INVALIDTOKEN_HANDLERS", "pg"),
        ("PUSHER_INVALIDTOKEN_PG_USER", "u"),
        ("PUSHER_INVALIDTOKEN_PG_PASS", "pgsecret"),
        ("PUSHER_INVALIDTOKEN_PG_HOST", "db"),
        ("PUSHER_INVALIDTOKEN_PG_DATABASE", "tokens"),
        ("PUSHER_INVALIDTOKEN_PG_PORT", "6543"),
        ("PUSHER_INVALIDTOKEN_PG_POOLSIZE", "4"),
        ("PUSHER_INVALIDTOKEN_PG_MAXRETRIES", "9"),
        ("PUSHER_INVALIDTOKEN_PG_CONNECTIONTIMEOUT", "250"),
        ("PUSHER_GRACEFULLSHUTDOWNTIMEOUT", "12"),
        ("PUSHER_APNS_CONCURRENTWORKERS", "20"),
        ("PUSHER_INFLIGHT", "64"),
        ("PUSHER_SENTRY_URL", "https://key@sentry.example/1"),
    ])
    .unwrap();
    assert_eq!(c.queue.topics, ["push-a_apns", "push-b_gcm"]);
    assert_eq!(c.queue.brokers, "k1:9092,k2:9092");
    assert!(!c.queue.handle_all_messages_before_exiting);
    assert_eq!(c.apns.apps, ["game", "my_app"]);
    assert_eq!(
        c.apns.certs["my_app"].auth_key_path.as_deref(),
        Some(Path::new("/keys/k.p8"))
    );
    assert_eq!(c.apns.certs["my_app"].key_id.as_deref(), Some("ABC"));
    assert_eq!(
        c.apns.certs["game"].password.as_ref().unwrap().expose(),
        "hunter2"
    );
    assert_eq!(c.gcm.apps, ["g1"]);
    assert_eq!(
        c.gcm.certs["g1"].api_key.as_ref().unwrap().expose(),
        "AIzaSecret"
    );
    assert_eq!(c.gcm.certs["g1"].sender_id.as_deref(), Some("123"));
    assert!(c.gcm.firebase_credentials["g1"]
        .expose()
        .contains("private_key"));
    assert!(c.feedback.reporters.is_empty());
    assert_eq!(c.feedback.kafka.topic_template(), "fb-{app}-{platform}");
    assert_eq!(c.feedback.kafka.brokers, "fb:9092");
    assert_eq!(
        c.stats.reporters,
        [StatsReporter::Statsd, StatsReporter::Prometheus]
    );
    assert_eq!(c.stats.statsd.host, "stats:8125");
    assert_eq!(c.stats.statsd.prefix, "p.");
    assert_eq!(c.stats.statsd.flush_interval, Duration::from_millis(100));
    assert_eq!(c.stats.log_interval, Duration::from_secs(60));
    let pg = &c.invalid_token.pg;
    assert_eq!(
        (pg.user.as_str(), pg.host.as_str(), pg.database.as_str()),
        ("u", "db", "tokens")
    );
    assert_eq!(pg.pass.as_ref().unwrap().expose(), "pgsecret");
    assert_eq!(
        (pg.port, pg.pool_size, pg.connection_timeout),
        (6543, 4, Duration::from_millis(250))
    );
    assert_eq!(c.graceful_shutdown_timeout, Duration::from_secs(12));
    assert_eq!(c.in_flight, 64);
    assert_eq!(
        c.sentry.url.as_ref().unwrap().expose(),
        "https://key@sentry.example/1"
    );
    let seed: Vec<&str> = c.seed_keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        seed,
        [
            "PUSHER_APNS_CONCURRENTWORKERS",
            "PUSHER_GCM_MAXPENDINGMESSAGES",
            "PUSHER_INVALIDTOKEN_PG_MAXRETRIES"
        ]
    );
}

#[test]
fn env_cert_keys_merge_with_file_keys_case_insensitively() {
    let f = yaml_file(
        "apns:\n  apps: Game\n  certs:\n    Game:\n      keyID: FILE\n      topic: com.x\n",
    );
    let c = Config::load(f.path(), env(&[("PUSHER_APNS_CERTS_GAME_KEYID", "ENV")])).unwrap();
    assert_eq!(c.apns.apps, ["Game"], "a comma string in YAML is a list");
    assert_eq!(c.apns.certs["Game"].key_id.as_deref(), Some("ENV"));
    assert_eq!(c.apns.certs["Game"].topic.as_deref(), Some("com.x"));
}

#[test]
fn bad_values_name_the_key() {
    let err = |pairs: &[(&str, &str)]| from_env(pairs).unwrap_err().to_string();
    assert_eq!(
        err(&[("PUSHER_INFLIGHT", "many")]),
        "PUSHER_INFLIGHT: expected a whole number >= 0, got \"many\""
    );
    assert!(err(&[("PUSHER_FEEDBACK_INCLUDESUCCESS", "maybe")])
        .starts_with("PUSHER_FEEDBACK_INCLUDESUCCESS: expected true or false"));
    let e = err(&[("PUSHER_INVALIDTOKEN_PG_PORT", "70000")]);
    assert!(e.starts_with("PUSHER_INVALIDTOKEN_PG_PORT: "), "{e}");

    let e = from_yaml("queue:\n  sessionTimeout: [1]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue.sessionTimeout"), "{e}");
    let e = from_yaml("apns:\n  retry:\n    interval: soonish\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("apns.retry.interval") && e.contains("soonish"),
        "{e}"
    );
    assert!(matches!(
        from_yaml("queue: [\n"),
        Err(ConfigError::Parse { .. })
    ));
    assert!(matches!(
        Config::load(Path::new("/nonexistent/pusher.yaml"), env(&[])),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn validate_names_the_key() {
    let check =
        |pairs: &[(&str, &str)]| from_env(pairs).unwrap().validate().unwrap_err().to_string();
    assert_eq!(
        check(&[("PUSHER_QUEUE_BROKERS", " ")]),
        "queue.brokers: must not be empty"
    );
    assert!(
        check(&[("PUSHER_QUEUE_TOPICS", "^push-(")]).starts_with("queue.topics[0]: invalid regex")
    );
    assert_eq!(
        check(&[("PUSHER_QUEUE_SESSIONTIMEOUT", "0")]),
        "queue.sessionTimeout: must be > 0"
    );
    assert_eq!(
        check(&[("PUSHER_API_WRITETIMEOUT", "0")]),
        "api.writeTimeout: must be > 0"
    );
    assert_eq!(
        check(&[("PUSHER_APNS_APPS", "game")]),
        "apns.certs.game: missing: every app in apns.apps needs credentials"
    );
    // A bare `mailto:` passed a prefix check, and push services refused every token.
    for subject in ["mailto:", "mailto:ops", "https:"] {
        assert_eq!(
            check(&[
                ("PUSHER_WEBPUSH_APPS", "game"),
                ("PUSHER_WEBPUSH_VAPID_GAME_PRIVATEKEY", "x"),
                ("PUSHER_WEBPUSH_VAPID_GAME_SUBJECT", subject)
            ]),
            "webpush.vapid.game.subject: required: a mailto: address (mailto:ops@example.com) \
             or an https: URL (RFC 8292)",
            "{subject}"
        );
    }
    assert_eq!(
        check(&[
            ("PUSHER_APNS_APPS", "game"),
            ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", "/nonexistent/k.p8")
        ]),
        "apns.certs.game.authKeyPath: file not found: /nonexistent/k.p8"
    );
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apns/AuthKey_TESTKEY001.p8");
    let key = key.to_str().unwrap();
    assert_eq!(
        check(&[
            ("PUSHER_APNS_APPS", "game"),
            ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", key)
        ]),
        "apns.certs.game.keyID: required with authKeyPath"
    );
    assert_eq!(
        check(&[
            ("PUSHER_APNS_APPS", "game"),
            ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", key),
            ("PUSHER_APNS_CERTS_GAME_KEYID", "TESTKEY001"),
            ("PUSHER_APNS_CERTS_GAME_TEAMID", "TEAM")
        ]),
        "apns.certs.game.topic: required with authKeyPath (the app's bundle id)"
    );
    // Both kinds for one app: token auth was used and the certificate ignored, silently.
    assert_eq!(
        check(&[
            ("PUSHER_APNS_APPS", "game"),
            ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", key),
            ("PUSHER_APNS_CERTS_GAME_KEYID", "TESTKEY001"),
            ("PUSHER_APNS_CERTS_GAME_TEAMID", "TEAM"),
            ("PUSHER_APNS_CERTS_GAME_TOPIC", "com.example.game"),
            ("PUSHER_APNS_CERTS_GAME_CERTIFICATE", key),
        ]),
        "apns.certs.game.authKeyPath: set beside apns.certs.game.certificate: give token auth \
         (authKeyPath) or a client certificate, not both"
    );
    assert!(check(&[("PUSHER_APNS_APPS", "a;drop")]).starts_with("apns.certs.a;drop: app name"));
    assert_eq!(
        check(&[("PUSHER_GCM_APPS", "g")]),
        "gcm.certs.g: missing: every app in gcm.apps needs serviceAccountFile, apiKey or gcm.firebaseCredentials"
    );
    assert!(check(&[("PUSHER_STATS_STATSD_HOST", "nohost")]).starts_with("stats.statsd.host:"));
    assert_eq!(
        check(&[("PUSHER_STATS_STATSD_FLUSHINTERVALINMS", "0")]),
        "stats.statsd.flushIntervalInMs: must be > 0"
    );
    assert_eq!(
        check(&[("PUSHER_INVALIDTOKEN_PG_POOLSIZE", "0")]),
        "invalidToken.pg.poolSize: must be >= 1"
    );
    assert_eq!(
        check(&[("PUSHER_FEEDBACK_KAFKA_BROKERS", "")]),
        "feedback.kafka.brokers: must not be empty"
    );
    assert_eq!(
        check(&[("PUSHER_SENTRY_URL", "key@nowhere")]),
        "sentry.url: must be an http(s):// DSN"
    );

    // A complete, valid multi-app setup.
    from_env(&[
        ("PUSHER_APNS_APPS", "game,other"),
        ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", key),
        ("PUSHER_APNS_CERTS_GAME_KEYID", "TESTKEY001"),
        ("PUSHER_APNS_CERTS_GAME_TEAMID", "TEAM"),
        ("PUSHER_APNS_CERTS_GAME_TOPIC", "com.example.game"),
        ("PUSHER_APNS_CERTS_OTHER_CERTIFICATE", key),
        ("PUSHER_APNS_CERTS_OTHER_TOPIC", "com.example.other"),
        ("PUSHER_GCM_APPS", "game"),
        ("PUSHER_GCM_FIREBASECREDENTIALS_GAME", "{}"),
    ])
    .unwrap()
    .validate()
    .unwrap();
}

/// The keys behind `run apns --key` and `run gcm --token-uri`: read, and a missing key file
/// named.
#[test]
fn certificate_key_and_token_uri() {
    let cert = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apns/client.p12");
    let cert = cert.to_str().unwrap();
    let c = from_env(&[
        ("PUSHER_APNS_APPS", "game"),
        ("PUSHER_APNS_CERTS_GAME_CERTIFICATE", cert),
        (
            "PUSHER_APNS_CERTS_GAME_CERTIFICATEKEY",
            "/nonexistent/k.pem",
        ),
        ("PUSHER_APNS_CERTS_GAME_TOPIC", "com.example.game"),
        ("PUSHER_GCM_CERTS_GAME_TOKENURI", "http://127.0.0.1:1/token"),
    ])
    .unwrap();
    assert_eq!(
        c.gcm.certs["game"].token_uri.as_deref(),
        Some("http://127.0.0.1:1/token")
    );
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "apns.certs.game.certificateKey: file not found: /nonexistent/k.pem"
    );
}

#[test]
fn debug_and_serialize_show_no_secret() {
    let c = from_env(&[
        ("PUSHER_APNS_CERTS_GAME_PASSWORD", "apns-p12-password"),
        ("PUSHER_GCM_CERTS_GAME_APIKEY", "AIzaSyLEGACYKEY"),
        (
            "PUSHER_GCM_FIREBASECREDENTIALS_GAME",
            "-----BEGIN PRIVATE KEY-----MIIE",
        ),
        ("PUSHER_INVALIDTOKEN_PG_PASS", "pg-password-123"),
        ("PUSHER_SENTRY_URL", "https://sentrykey456@sentry.example/1"),
        (
            "PUSHER_RESULTS_WEBHOOKS_GAME",
            "https://hooks.example/x?token=hooktoken789",
        ),
    ])
    .unwrap();
    let printed = format!("{c:?} {c:#?} {}", serde_yaml_ng::to_string(&c).unwrap());
    for secret in [
        "apns-p12-password",
        "AIzaSyLEGACYKEY",
        "PRIVATE KEY",
        "pg-password-123",
        "sentrykey456",
        "hooktoken789",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked");
    }
    assert!(printed.contains("<redacted>"));
}

#[test]
fn api_keys_come_from_the_file_or_the_environment_and_are_checked() {
    let c =
        from_yaml("api:\n  keys:\n    backend:\n      app: game\n      key: 0123456789abcdef0\n")
            .unwrap()
            .validate()
            .unwrap();
    assert_eq!(c.api.keys["backend"].app, "game");
    assert_eq!(
        c.api.keys["backend"].key.as_ref().map(Secret::expose),
        Some("0123456789abcdef0")
    );
    // Never printed.
    assert!(!format!("{c:?}").contains("0123456789abcdef0"));
    let c = from_env(&[
        ("PUSHER_API_KEYS_OPS_APP", "game"),
        ("PUSHER_API_KEYS_OPS_KEY", "fedcba98765432100"),
        ("PUSHER_API_RATEPERSECOND", "5"),
    ])
    .unwrap();
    assert_eq!(c.api.keys["ops"].app, "game");
    assert_eq!(c.api.rate_per_second, 5);
    let problems = [
        ("api:\n  keys:\n    a:\n      app: game\n", "api.keys.a.key: required"),
        ("api:\n  keys:\n    a:\n      app: game\n      key: short\n", "api.keys.a.key: at least 16"),
        ("api:\n  keys:\n    a:\n      app: \"g g\"\n      key: 0123456789abcdef0\n", "api.keys.a.app: app name"),
        ("api:\n  listen: nowhere\n", "api.listen:"),
        ("api:\n  maxNotifications: 0\n", "api.maxNotifications: must be >= 1"),
        (
            "api:\n  keys:\n    a: {app: g, key: 0123456789abcdef0}\n    b: {app: h, key: 0123456789abcdef0}\n",
            "api.keys.b.key: the same key as another name",
        ),
    ];
    for (yaml, expected) in problems {
        let err = from_yaml(yaml).unwrap().validate().unwrap_err().to_string();
        assert!(err.starts_with(expected), "{yaml}: {err}");
    }
}

/// Event mode's per-device limits are a per-app map like the others: settable from the file
/// (as `config/default.yaml`'s comment shows) and from the environment. Seen: both were refused
/// as unknown keys, so no limit could be set outside code.
#[test]
fn route_limits_come_from_the_file_or_the_environment() {
    let c = from_yaml(
        "route:\n  limits:\n    default:\n      perDevice: 5\n      window: 3600\n      dedupWindow: 600\n",
    )
    .unwrap();
    let d = &c.route.limits["default"];
    assert_eq!(
        (d.per_device, d.window, d.dedup_window),
        (5, Duration::from_secs(3600), Duration::from_secs(600))
    );
    c.validate().unwrap();
    let c = from_env(&[
        ("PUSHER_ROUTE_LIMITS_GAME_PERDEVICE", "3"),
        ("PUSHER_ROUTE_LIMITS_GAME_WINDOW", "60"),
    ])
    .unwrap();
    let g = &c.route.limits["game"];
    assert_eq!((g.per_device, g.window), (3, Duration::from_secs(60)));
    let e = from_yaml("route:\n  limits:\n    default:\n      perDevise: 5\n").unwrap_err();
    assert!(e.to_string().contains("perDevise"), "{e}");
    // Past PostgreSQL's timestamps every claim, and the router's batch, would fail for good:
    // refused, naming the key.
    for (key, lines) in [
        ("window", "window: 400000000"),
        ("dedupWindow", "window: 60\n      dedupWindow: 400000000"),
    ] {
        let yaml = format!("route:\n  limits:\n    game:\n      perDevice: 5\n      {lines}\n");
        let err = from_yaml(&yaml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("route.limits.game.{key}: must be <=")),
            "{err}"
        );
    }
}

/// An unquoted scalar of a text key (a password, a key id) is the text as written: YAML's own
/// typing made `1e3` `"1000.0"` and `0x1F` `"31"`, and an integer above u64 failed to load
/// with its digits in the message (printed on stderr and sent to Sentry).
#[test]
fn text_keys_keep_numeric_looking_scalars_as_written() {
    let big = "123456789012345678901234";
    let c = from_yaml(&format!("invalidToken:\n  pg:\n    pass: {big}\n")).unwrap();
    assert_eq!(
        c.invalid_token.pg.pass.as_ref().map(Secret::expose),
        Some(big)
    );
    for written in [
        "1e3", "0x1F", "+123", "1.50", "0o17", "1_000", ".inf", "-0", "007",
    ] {
        let c = from_yaml(&format!(
            "invalidToken:\n  pg:\n    pass: {written}\napns:\n  certs:\n    game:\n      keyID: {written}\n      password: {written}\n"
        ))
        .unwrap();
        assert_eq!(
            c.invalid_token.pg.pass.as_ref().map(Secret::expose),
            Some(written)
        );
        let game = &c.apns.certs["game"];
        assert_eq!(game.key_id.as_deref(), Some(written));
        assert_eq!(game.password.as_ref().map(Secret::expose), Some(written));
    }
    let c = from_yaml(
        "apns:\n  certs:\n    game:\n      keyID: 1234567E89\n      teamID: true\ngcm:\n  certs:\n    game:\n      apiKey: 12345678901234567890123456789\n      senderID: 0x10\n",
    )
    .unwrap();
    assert_eq!(c.apns.certs["game"].key_id.as_deref(), Some("1234567E89"));
    assert_eq!(c.apns.certs["game"].team_id.as_deref(), Some("true"));
    let g = &c.gcm.certs["game"];
    assert_eq!(
        g.api_key.as_ref().map(Secret::expose),
        Some("12345678901234567890123456789")
    );
    assert_eq!(g.sender_id.as_deref(), Some("0x10"));
    // List items too; null is still no value; merged and aliased text as written.
    let c = from_yaml(
        "apns:\n  apps: [1e3, game]\n  certs:\n    base: &b\n      keyID: 1e3\n      topic: &num 0x1F\n    game:\n      <<: *b\n      teamID: *num\ninvalidToken:\n  pg:\n    pass: ~\n",
    )
    .unwrap();
    assert_eq!(c.apns.apps, ["1e3", "game"]);
    assert_eq!(c.apns.certs["game"].key_id.as_deref(), Some("1e3"));
    assert_eq!(c.apns.certs["game"].team_id.as_deref(), Some("0x1F"));
    assert!(c.invalid_token.pg.pass.is_none());
    // Numbers are still numbers, durations still take bare numbers.
    let c = from_yaml("inFlight: 0x10\nqueue:\n  sessionTimeout: 7000\n").unwrap();
    assert_eq!(c.in_flight, 16);
    assert_eq!(c.queue.session_timeout, Duration::from_millis(7000));
}

/// A number too large for any key, or one under an unknown key, is an error naming the key,
/// never its digits (a secret put under a misspelled key is still a secret).
#[test]
fn an_out_of_range_number_is_refused_without_its_digits() {
    let big = "123456789012345678901234";
    for yaml in [
        format!("inFlight: {big}\n"),
        format!("invalidToken:\n  pg:\n    password: {big}\n"),
        format!("invalidToken:\n  pg:\n    port: -{big}\n"),
        format!("log:\n  level: {big}\n"),
    ] {
        let e = from_yaml(&yaml).unwrap_err().to_string();
        assert!(!e.contains("1234567890"), "{yaml}: {e}");
        assert!(
            e.contains("out of range") || e.contains("unknown key"),
            "{yaml}: {e}"
        );
    }
    let e = from_yaml(&format!("inFlight: {big}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("inFlight: a number out of range"), "{e}");
    let e = from_yaml("queue:\n  brokers: a\n  brokers: b\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate key brokers"), "{e}");
    let e = from_yaml("queue:\n  sessionTimeout: [1]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue.sessionTimeout"), "{e}");
}

/// An API key or metrics token with surrounding whitespace (a Kubernetes Secret's trailing
/// newline) or a character no header carries validated, and then no request could match it:
/// every call 401, nothing logged. Refused, naming the key and never the value.
#[test]
fn keys_callers_present_must_be_presentable() {
    let good = "0123456789abcdef";
    for bad in [
        format!("{good}\n"),
        format!(" {good}"),
        format!("{good}\t"),
        format!("{good}\u{e9}"),
        "0123456789\u{7f}abcdef".to_string(),
    ] {
        let e = from_env(&[
            ("PUSHER_API_KEYS_X_APP", "game"),
            ("PUSHER_API_KEYS_X_KEY", bad.as_str()),
        ])
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("api.keys.x.key: "), "{bad:?}: {e}");
        assert!(!e.contains(good), "{e}");
        let e = from_env(&[("PUSHER_STATS_PROMETHEUS_TOKEN", bad.as_str())])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("stats.prometheus.token: "), "{bad:?}: {e}");
        assert!(!e.contains(good), "{e}");
    }
    // The same from the file.
    let e = from_yaml(&format!(
        "api:\n  keys:\n    x:\n      app: game\n      key: \"{good}\\n\"\n"
    ))
    .unwrap()
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("api.keys.x.key: "), "{e}");
    for fine in [good.to_owned(), format!("{good} with spaces inside")] {
        from_env(&[
            ("PUSHER_API_KEYS_X_APP", "game"),
            ("PUSHER_API_KEYS_X_KEY", fine.as_str()),
            ("PUSHER_STATS_PROMETHEUS_TOKEN", fine.as_str()),
        ])
        .unwrap()
        .validate()
        .unwrap();
    }
}

/// Kubernetes sets service-link variables for every Service in every pod of its namespace: a
/// Service named `pusher-api` made `PUSHER_API_PORT` & co., unknown keys that stopped every
/// pusher there (exit 2). They are not config; real keys that look like them still are.
#[test]
fn kubernetes_service_links_are_not_config() {
    let keys = Keys::new().unwrap();
    let links = [
        "PUSHER_API_SERVICE_HOST",
        "PUSHER_API_SERVICE_PORT",
        "PUSHER_API_SERVICE_PORT_HTTP",
        "PUSHER_API_SERVICE_PORT_METRICS_PORT",
        "PUSHER_API_PORT",
        "PUSHER_API_PORT_8088_TCP",
        "PUSHER_API_PORT_8088_TCP_PROTO",
        "PUSHER_API_PORT_8088_TCP_PORT",
        "PUSHER_API_PORT_8088_TCP_ADDR",
        "PUSHER_QUEUE_PORT_53_UDP_ADDR",
        "PUSHER_APNS_SERVICE_HOST",
        "PUSHER_INVALIDTOKEN_PG_SERVICE_PORT",
        "PUSHER_STATS_PORT_9091_SCTP",
        "PUSHER_SERVICE_HOST",
        "PUSHER_PORT",
        "PUSHER_PORT_8088_TCP_ADDR",
    ];
    for name in links {
        assert_eq!(
            classify(&keys, name).unwrap(),
            EnvKey::ServiceLink,
            "{name}"
        );
    }
    // With the values Kubernetes gives them.
    let value = |name: &str| {
        if name.ends_with("_HOST") || name.ends_with("_ADDR") {
            "10.0.0.1"
        } else if name.ends_with("_PROTO") {
            "tcp"
        } else if name.contains("_SERVICE_PORT") || name.ends_with("_TCP_PORT") {
            "8088"
        } else {
            "tcp://10.0.0.1:8088"
        }
    };
    let pairs: Vec<(&str, &str)> = links.iter().map(|n| (*n, value(n))).collect();
    from_env(&pairs).unwrap().validate().unwrap();
    // A typo of a real key that ends like a link, with a value no link has, is still one.
    for (name, v) in [
        ("PUSHER_INVALID_TOKEN_PG_PORT", "5433"),
        ("PUSHER_API_PORT", "8088"),
    ] {
        let e = from_env(&[(name, v)]).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
    }
    // Keys first: a real key ending in _PORT is a key.
    assert_eq!(
        classify(&keys, "PUSHER_INVALIDTOKEN_PG_PORT").unwrap(),
        EnvKey::Key(
            vec!["invalidToken".into(), "pg".into(), "port".into()],
            Kind::Number
        )
    );
    // Near misses of the pattern are still unknown keys.
    for name in [
        "PUSHER_API_PORT_8088_HTTP",
        "PUSHER_API_PORT_X_TCP",
        "PUSHER_API_PORT_8088_TCP_HOST",
        "PUSHER_API_SERVICE_PORT_",
        "PUSHER_API_LISTN",
    ] {
        assert!(classify(&keys, name).is_err(), "{name}");
    }
}

/// Bounds that keep a config from panicking or allocating without end: `inFlight` sizes a
/// semaphore (which panics above usize::MAX >> 3), a route or results batch is allocated at its
/// full size.
#[test]
fn sizes_have_upper_bounds() {
    let check =
        |pairs: &[(&str, &str)]| from_env(pairs).unwrap().validate().unwrap_err().to_string();
    assert_eq!(
        check(&[("PUSHER_INFLIGHT", &usize::MAX.to_string())]),
        "inFlight: must be <= 1000000"
    );
    assert_eq!(
        check(&[("PUSHER_ROUTE_BATCHSIZE", "100001")]),
        "route.batchSize: must be <= 100000"
    );
    assert_eq!(
        check(&[("PUSHER_RESULTS_BATCHSIZE", "18446744073709551615")]),
        "results.batchSize: must be <= 100000"
    );
    from_env(&[
        ("PUSHER_INFLIGHT", "1000000"),
        ("PUSHER_ROUTE_BATCHSIZE", "100000"),
        ("PUSHER_RESULTS_BATCHSIZE", "100000"),
    ])
    .unwrap()
    .validate()
    .unwrap();
}

/// A certificate connection without apns-topic gets the certificate's own topic (the sender
/// leaves the header out, the fake and APNs take the certificate's): the topic is optional
/// there, as the README says; token auth still needs it.
#[test]
fn the_topic_is_optional_with_a_certificate_only() {
    let fixture = |f: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/apns")
            .join(f)
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (cert, key) = (fixture("client.p12"), fixture("AuthKey_TESTKEY001.p8"));
    from_env(&[
        ("PUSHER_APNS_APPS", "game"),
        ("PUSHER_APNS_CERTS_GAME_CERTIFICATE", &cert),
    ])
    .unwrap()
    .validate()
    .unwrap();
    let err = |pairs: &[(&str, &str)]| from_env(pairs).unwrap().validate().unwrap_err().to_string();
    assert_eq!(
        err(&[
            ("PUSHER_APNS_APPS", "game"),
            ("PUSHER_APNS_CERTS_GAME_CERTIFICATE", &cert),
            ("PUSHER_APNS_CERTS_GAME_TOPIC", ""),
        ]),
        "apns.certs.game.topic: must not be empty"
    );
    assert!(err(&[
        ("PUSHER_APNS_APPS", "game"),
        ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", &key),
        ("PUSHER_APNS_CERTS_GAME_KEYID", "K"),
        ("PUSHER_APNS_CERTS_GAME_TEAMID", "T"),
    ])
    .starts_with("apns.certs.game.topic: required with authKeyPath"));
}

/// A URL given as the PostgreSQL host (it holds the password) is refused without echoing it.
/// Seen: taken as a host name (every DELETE failed), and logged whole with -d.
#[test]
fn a_url_as_the_postgresql_host_is_refused_without_echoing_it() {
    let err = from_env(&[(
        "PUSHER_INVALIDTOKEN_PG_HOST",
        "postgres://pusher:hunter2@127.0.0.1/push",
    )])
    .unwrap()
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("invalidToken.pg.host"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let conninfo = from_env(&[(
        "PUSHER_INVALIDTOKEN_PG_HOST",
        "host=127.0.0.1 password=hunter2",
    )])
    .unwrap()
    .validate()
    .unwrap_err()
    .to_string();
    assert!(!conninfo.contains("hunter2"), "{conninfo}");
}

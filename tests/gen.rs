//! `pusher gen`: the binary's output, the library generator, and the Kafka sink against
//! librdkafka's mock cluster.

use pusher::gen::{GenConfig, Generator, Mix};
use pusher::push::apns::PushType;
use pusher::push::message::{parse_apns, parse_gcm};
use pusher::push::token_rules::TokenRule;
use pusher::push::Platform;
use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn pusher(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pusher"))
        .arg("gen")
        .args(args)
        .output()
        .expect("runs pusher")
}

fn lines(out: &Output) -> Vec<&[u8]> {
    assert!(
        out.status.success(),
        "pusher gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn same_seed_gives_the_same_bytes() {
    for platform in ["apns", "gcm"] {
        let args = [
            "--platform",
            platform,
            "--count",
            "500",
            "--seed",
            "42",
            "--invalid-ratio",
            "0.1",
            "--payload-size",
            "200:1,900:1",
        ];
        let a = pusher(&args);
        let b = pusher(&args);
        assert_eq!(lines(&a).len(), 500);
        assert_eq!(
            a.stdout, b.stdout,
            "{platform}: same seed, different output"
        );
        let c = pusher(&[
            "--platform",
            platform,
            "--count",
            "500",
            "--seed",
            "43",
            "--invalid-ratio",
            "0.1",
            "--payload-size",
            "200:1,900:1",
        ]);
        assert_ne!(a.stdout, c.stdout, "{platform}: the seed changes nothing");
    }
}

#[test]
fn random_seed_is_printed_and_repeats_the_output() {
    let a = pusher(&["--count", "20", "--quiet"]);
    let stderr = String::from_utf8_lossy(&a.stderr);
    let seed = stderr
        .split("--seed ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no seed on stderr: {stderr}"));
    let b = pusher(&["--count", "20", "--quiet", "--seed", seed]);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn every_line_parses_back_with_the_pusher_parser() {
    let apns = pusher(&[
        "--platform",
        "apns",
        "--count",
        "2k",
        "--seed",
        "7",
        "--invalid-ratio",
        "0.3",
        "--retry-ratio",
        "0.2",
        "--push-type",
        "alert:0.7,background:0.3",
        "--payload-size",
        "200:0.5,1000:0.4,3500:0.1",
        "--app",
        "my-game",
    ]);
    let apns_lines = lines(&apns);
    assert_eq!(apns_lines.len(), 2000);
    let mut push_types = HashMap::new();
    for line in &apns_lines {
        let m =
            parse_apns(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        assert_eq!(m.notification.token.len(), 64);
        assert!(pusher::push::apns::valid_token(&m.notification.token));
        assert_eq!(
            m.metadata.to_map().get("app").and_then(|v| v.as_str()),
            Some("my-game")
        );
        assert!(m
            .metadata
            .to_map()
            .get("jobId")
            .and_then(|v| v.as_str())
            .is_some_and(|id| id.len() == 36));
        assert_eq!(m.push_expiry, 0);
        *push_types.entry(m.notification.push_type).or_insert(0) += 1;
    }
    assert_eq!(
        push_types.len(),
        2,
        "both push types appear: {push_types:?}"
    );
    assert!(push_types.contains_key(&Some(PushType::Background)));

    let gcm = pusher(&[
        "--platform",
        "gcm",
        "--count",
        "2k",
        "--seed",
        "7",
        "--invalid-ratio",
        "0.3",
        "--dry-run",
        "--payload-size",
        "3000",
    ]);
    for line in lines(&gcm) {
        let m =
            parse_gcm(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        assert_eq!(m.to.len(), 152);
        assert_eq!(&m.to[22..29], ":APA91b");
        assert!(m.dry_run);
        assert!(m
            .notification
            .as_ref()
            .is_some_and(|n| n.title.is_some() && n.body.is_some()));
        assert!(
            m.data.get("level").is_some_and(|v| v.is_u64()),
            "non-string data kept"
        );
        assert!(m.data.contains_key("jobId"), "metadata merged into data");
    }
}

#[test]
fn payload_sizes_hit_their_targets() {
    for platform in [Platform::Apns, Platform::Gcm, Platform::WebPush] {
        for target in [400, 1000, 3500] {
            let mut config = GenConfig::new(platform);
            config.count = 50;
            config.payload_size = Some(Mix::single(target));
            for msg in Generator::new(config).expect("valid config") {
                let v: serde_json::Value = serde_json::from_slice(&msg.bytes).expect("JSON");
                // serde_json writes strings as the generator does, so lengths compare exactly.
                let size = match platform {
                    Platform::Apns => v["Payload"].to_string().len(),
                    Platform::Gcm => {
                        v["notification"].to_string().len() + v["data"].to_string().len()
                    }
                    // What gets encrypted: the payload's JSON as written.
                    Platform::WebPush => v["payload"].to_string().len(),
                };
                assert_eq!(
                    size,
                    target,
                    "{platform} {}",
                    String::from_utf8_lossy(&msg.bytes)
                );
            }
        }
    }
}

#[test]
fn token_rules_follow_the_ratios() {
    for platform in [Platform::Apns, Platform::Gcm, Platform::WebPush] {
        let mut config = GenConfig::new(platform);
        config.count = 30_000;
        config.seed = 99;
        config.invalid_ratio = 0.15;
        config.retry_ratio = 0.06;
        let mut per_rule: HashMap<Option<TokenRule>, u64> = HashMap::new();
        for msg in Generator::new(config).expect("valid config") {
            assert_eq!(
                TokenRule::of(&msg.token),
                msg.rule,
                "token {} does not fall under its rule",
                msg.token
            );
            let text = String::from_utf8(msg.bytes).expect("UTF-8");
            assert!(text.contains(&msg.token));
            *per_rule.entry(msg.rule).or_default() += 1;
        }
        let share = |rules: &[TokenRule]| {
            rules
                .iter()
                .map(|r| per_rule.get(&Some(*r)).copied().unwrap_or(0))
                .sum::<u64>() as f64
                / 30_000.0
        };
        let invalid = share(&[
            TokenRule::Unregistered,
            TokenRule::BadToken,
            TokenRule::WrongTopic,
        ]);
        let retry = share(&[TokenRule::UnavailableOnce, TokenRule::ThrottledOnce]);
        assert!(
            (invalid - 0.15).abs() < 0.01,
            "{platform}: invalid share {invalid}"
        );
        assert!(
            (retry - 0.06).abs() < 0.01,
            "{platform}: retry share {retry}"
        );
        for rule in TokenRule::all() {
            let n = per_rule.get(&Some(rule)).copied().unwrap_or(0);
            assert!(n > 500, "{platform}: rule {rule:?} only {n} times");
        }
    }
    // Ratio 0: no token falls under any rule, even by chance.
    let mut config = GenConfig::new(Platform::Apns);
    config.count = 50_000;
    assert!(Generator::new(config)
        .expect("valid")
        .all(|m| m.rule.is_none() && TokenRule::of(&m.token).is_none()));
}

#[test]
fn counts_take_suffixes() {
    for (arg, want) in [("7", 7), ("2k", 2000), ("2K", 2000)] {
        let out = pusher(&["--count", arg, "--seed", "1", "-q", "--platform", "gcm"]);
        assert_eq!(lines(&out).len(), want, "--count {arg}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.jsonl");
    let out = pusher(&[
        "--count",
        "1k",
        "--seed",
        "1",
        "--out",
        file.to_str().expect("path"),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout with --out");
    let text = std::fs::read_to_string(&file).expect("file written");
    assert_eq!(text.lines().count(), 1000);
    assert_eq!(
        text.into_bytes(),
        pusher(&["--count", "1k", "--seed", "1"]).stdout
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["--count", "0"], "at least 1"),
        (&["--count", "1x"], "\"1x\" is not a whole number"),
        (&["--count=-5"], "\"-5\" is not a whole number"),
        (&["--invalid-ratio", "2"], "ratio 2 is not between 0 and 1"),
        (&["--retry-ratio", "abc"], "not a number"),
        (
            &["--invalid-ratio", "0.7", "--retry-ratio", "0.5"],
            "over 1",
        ),
        (&["--payload-size", "200:0.5,x:0.5"], "size \"x\""),
        (&["--payload-size", "0"], "from 1 to"),
        (&["--push-type", "telepathy"], "unknown push type"),
        (&["--platform", "sms"], "unknown platform"),
        (&["--app", "bad app"], "app name"),
        (&["--topic", "t"], "--brokers"),
        (&["--platform", "gcm", "--push-type", "alert"], "APNs only"),
        // Copied into the JSON as it is: a quote or a backslash made lines that are not JSON.
        (
            &["--platform", "webpush", "--webpush-origin", "https://a\"b"],
            "web push origin",
        ),
        (
            &["--platform", "webpush", "--webpush-origin", "https://a\\b"],
            "web push origin",
        ),
        (
            &[
                "--platform",
                "webpush",
                "--webpush-origin",
                "127.0.0.1:8445",
            ],
            "must be an http:// or https:// URL",
        ),
        (
            &[
                "--shape",
                "constant",
                "--duration",
                "1s",
                "--peak-rate",
                "20",
                "-n",
                "5",
            ],
            "cannot be used with",
        ),
        (
            &[
                "--shape",
                "constant",
                "--duration",
                "0s",
                "--peak-rate",
                "20",
            ],
            "not a length of time above zero",
        ),
    ];
    for (args, needle) in cases {
        let out = pusher(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
    }
}

/// Reads `n` messages from every partition of `topic`, from the beginning: (key, value) pairs.
fn consume_all(brokers: &str, topic: &str, partitions: i32, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "gen-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    got.sort();
    got
}

/// What `pusher gen --platform gcm --count <n> --seed <seed>` writes: (token, value) pairs.
fn generated_gcm(n: usize, seed: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut config = GenConfig::new(Platform::Gcm);
    config.count = n as u64;
    config.seed = seed;
    let mut want: Vec<_> = Generator::new(config)
        .expect("valid")
        .map(|m| (m.token.into_bytes(), m.bytes))
        .collect();
    want.sort();
    want
}

#[test]
fn kafka_sink_delivers_every_message() {
    const N: usize = 3000;
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("push-game_gcm", 4, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let out = pusher(&[
        "--platform",
        "gcm",
        "--count",
        "3k",
        "--seed",
        "5",
        "--kafka",
        &brokers,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("3000 delivered, 0 failed, to push-game_gcm"),
        "{stderr}"
    );
    let got = consume_all(&brokers, "push-game_gcm", 4, N);
    assert_eq!(got.len(), N, "consumed {} of {N}", got.len());
    assert!(
        got == generated_gcm(N, 5),
        "consumed messages differ from the generated ones"
    );
}

/// The README's `pusher gen | kcat -P` pipe, when kcat is installed (skipped otherwise).
#[test]
fn kcat_pipe_delivers_every_line() {
    use std::process::Stdio;
    const N: usize = 2000;
    if Command::new("kcat").arg("-V").output().is_err() {
        eprintln!("kcat not installed: skipping");
        return;
    }
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("push-game_gcm", 2, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let mut gen = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["gen", "--platform", "gcm", "--count", "2k", "--seed", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pusher gen");
    let stdin = gen.stdout.take().expect("pipe");
    let kcat = Command::new("kcat")
        .args(["-P", "-b", &brokers, "-t", "push-game_gcm"])
        .stdin(stdin)
        .output()
        .expect("kcat");
    assert!(gen.wait().expect("pusher gen exits").success());
    assert!(
        kcat.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&kcat.stderr)
    );
    let mut got: Vec<Vec<u8>> = consume_all(&brokers, "push-game_gcm", 2, N)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let mut want: Vec<Vec<u8>> = generated_gcm(N, 8).into_iter().map(|(_, v)| v).collect();
    want.sort();
    got.sort();
    assert_eq!(got.len(), N);
    assert!(got == want, "kcat delivered other bytes than generated");
}

#[test]
fn kafka_sink_fails_clearly_when_the_broker_is_unreachable() {
    // Port 1 on loopback: nothing listens; the brokers never answer.
    let out = pusher(&[
        "--count",
        "10",
        "--seed",
        "1",
        "--kafka",
        "127.0.0.1:1",
        "--kafka-timeout",
        "1s",
        "-q",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no answer from Kafka within 1s"),
        "{stderr}"
    );
}

/// Ctrl-C stops `gen` at a line's end: what was written is kept as a whole file, moved into
/// place (exit 130); before, the file was cut mid-line and `replay` refused it.
#[test]
fn an_interrupted_gen_keeps_a_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cap.jsonl");
    std::fs::write(&out, "old\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "gen",
            "--shape",
            "constant",
            "--duration",
            "10h",
            "--peak-rate",
            "5",
        ])
        .arg("-o")
        .arg(&out)
        .arg("-q")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.ends_with('\n') && text != "old\n",
        "{:?}",
        &text[..text.len().min(200)]
    );
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line whole");
    }
}

/// Seen: Ctrl-C during `gen --kafka` killed the process with up to 500k messages queued in
/// librdkafka and no count printed. Now it stops generating, gives the queue a few seconds,
/// drops the rest, prints what was delivered, and exits 130: the count is what the topic holds.
#[test]
fn an_interrupted_gen_into_kafka_counts_what_the_topic_holds() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::io::Read;
    use std::process::Stdio;
    const PARTITIONS: i32 = 4;
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic("push-game_gcm", PARTITIONS, 1)
        .expect("topic");
    let brokers = cluster.bootstrap_servers();
    let side: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("consumer");
    let in_topic = || -> i64 {
        (0..PARTITIONS)
            .map(|p| {
                side.fetch_watermarks("push-game_gcm", p, Duration::from_secs(5))
                    .expect("watermarks")
                    .1
            })
            .sum()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["gen", "--platform", "gcm", "-n", "50m", "--seed", "3"])
        .args(["--kafka", &brokers])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pusher gen");
    let mut stderr_pipe = child.stderr.take().expect("pipe");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    // Producing: messages reach the topic (the interrupt is watched by then).
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_topic() == 0 {
        assert!(Instant::now() < deadline, "nothing produced within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    // A hang guard: the queue gets 5 s, what is on the wire 2 s more.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gen still running 60 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let delivered: i64 = stderr
        .split("pusher gen: interrupted: ")
        .nth(1)
        .and_then(|rest| rest.split(" delivered to push-game_gcm").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delivered count: {stderr}"));
    assert!(delivered > 0, "{stderr}");
    assert!(delivered < 50_000_000, "{stderr}");
    assert_eq!(in_topic(), delivered, "{stderr}");
}

/// `gen | head` and `gen --shape ... | head` both end quietly with exit 0 when the reader
/// goes away (before, the shaped one printed "error: writing to stdout: Broken pipe", exit 2).
#[test]
fn a_reader_that_goes_away_ends_gen_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let plain: &[&str] = &["-n", "1m"];
    let shaped: &[&str] = &[
        "--shape",
        "constant",
        "--duration",
        "1h",
        "--peak-rate",
        "1000",
    ];
    for args in [plain, shaped] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pusher"))
            .arg("gen")
            .args(["--seed", "1", "-q"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pusher gen");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.ends_with('\n'), "{args:?}: {first:?}");
        // The reader is dropped here: the next write meets a closed pipe.
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?}: still running with no reader");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

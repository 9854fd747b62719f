//! Feedback records through Kafka: librdkafka's mock cluster over TCP, records produced by
//! `FeedbackProducer` and read back by a plain consumer: topic, key and exact JSON.

mod common;

use pusher::pipeline::feedback::{
    apns_record, gcm_record, FeedbackProducer, FeedbackRecord, MessageContext, SendDetails,
    DEFAULT_TOPIC_TEMPLATE,
};
use pusher::push::{Outcome, Platform};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::json;
use std::time::{Duration, Instant};

fn context(token: &str) -> MessageContext {
    MessageContext {
        app: "game".into(),
        token: token.to_owned(),
        metadata: json!({"jobId": "job-7"}).as_object().unwrap().into(),
        consumed_at_ms: 1_731_000_000_000,
        hostname: "test-host".into(),
        canonical_registration_id: None,
    }
}

/// Reads `count` records from partition 0 of `topic`, from the beginning, within 20 s.
fn read_back(bootstrap: &str, topic: &str, count: usize) -> Vec<(String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "feedback-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} of {count} records came back",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            let payload = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            records.push((key, payload));
        }
    }
    records
}

#[tokio::test]
async fn apns_and_gcm_feedback_round_trip_through_kafka() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    // One partition each, so read-back order is produce order.
    cluster
        .create_topic("push-game-apns-feedbacks", 1, 1)
        .unwrap();
    cluster
        .create_topic("push-game-gcm-feedbacks", 1, 1)
        .unwrap();
    let producer = FeedbackProducer::new(&bootstrap, DEFAULT_TOPIC_TEMPLATE).unwrap();

    let token = "a".repeat(64);
    let unregistered = Outcome::TokenInvalid {
        reason: "Unregistered".to_owned(),
        timestamp_ms: Some(1_700_000_000_000),
    };
    let details = SendDetails {
        apns_id: "6f1c7c2e-0000-4000-8000-000000000001".to_owned(),
        status: Some(410),
        notification: json!({"aps": {"alert": "Helena miss you! come play!"}, "M": {"jobId": "job-7"}}),
        location: None,
    };
    let apns = FeedbackRecord::Apns(apns_record(&unregistered, &context(&token), &details));
    producer.send("game", Platform::Apns, &apns).await.unwrap();
    let too_large = Outcome::Rejected {
        reason: "PayloadTooLarge".to_owned(),
    };
    let apns2 = FeedbackRecord::Apns(apns_record(
        &too_large,
        &context("b"),
        &SendDetails::default(),
    ));
    producer.send("game", Platform::Apns, &apns2).await.unwrap();

    let gcm_token = "g".repeat(152);
    let gcm_outcome = Outcome::TokenInvalid {
        reason: "UNREGISTERED".to_owned(),
        timestamp_ms: None,
    };
    let gcm = FeedbackRecord::Gcm(gcm_record(&gcm_outcome, &context(&gcm_token)));
    producer.send("game", Platform::Gcm, &gcm).await.unwrap();

    let apns_back = read_back(&bootstrap, "push-game-apns-feedbacks", 2);
    assert_eq!(apns_back[0].0, token, "key = device token");
    let expected_apns = json!({
        "Sent": false,
        "StatusCode": 410,
        "Reason": "Unregistered",
        "ApnsID": "6f1c7c2e-0000-4000-8000-000000000001",
        "Err": {"Key": "unregistered", "Description": "Unregistered"},
        "DeviceToken": token,
        "timestamp": 1_731_000_000,
        "metadata": {"jobId": "job-7", "game": "game", "deviceToken": token, "hostname": "test-host",
                     "timestamp": 1_731_000_000, "deleteToken": true,
                     "invalidSince": 1_700_000_000_000_i64},
        "Notification": {"aps": {"alert": "Helena miss you! come play!"}, "M": {"jobId": "job-7"}}
    });
    let got: serde_json::Value = serde_json::from_str(&apns_back[0].1).unwrap();
    assert_eq!(got, expected_apns);
    // Field order is the seed's (Go struct order).
    assert!(apns_back[0]
        .1
        .starts_with(r#"{"Sent":false,"StatusCode":410,"Reason":"Unregistered","ApnsID":"#));
    assert_eq!(
        apns_back[0].1.as_bytes(),
        apns.to_json().as_slice(),
        "bytes unchanged"
    );

    assert_eq!(apns_back[1].0, "b");
    let got: serde_json::Value = serde_json::from_str(&apns_back[1].1).unwrap();
    assert_eq!(got["StatusCode"], 413);
    assert_eq!(
        got["Err"],
        json!({"Key": "payload-too-large", "Description": "PayloadTooLarge"})
    );
    assert!(got["metadata"].get("deleteToken").is_none());

    let gcm_back = read_back(&bootstrap, "push-game-gcm-feedbacks", 1);
    assert_eq!(gcm_back[0].0, gcm_token);
    let got: serde_json::Value = serde_json::from_str(&gcm_back[0].1).unwrap();
    assert_eq!(
        got,
        json!({"from": gcm_token, "error": "DEVICE_UNREGISTERED", "error_description": "UNREGISTERED",
               "metadata": {"jobId": "job-7", "game": "game", "deviceToken": gcm_token, "hostname": "test-host",
                            "timestamp": 1_731_000_000, "deleteToken": true}})
    );
}

#[tokio::test]
async fn send_fails_when_no_broker_acknowledges() {
    // Nothing listens on this port; a short message timeout makes the failure quick.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let producer = FeedbackProducer::with_config(
        &format!("127.0.0.1:{port}"),
        DEFAULT_TOPIC_TEMPLATE,
        &[("message.timeout.ms", "500")],
    )
    .unwrap();
    let record = FeedbackRecord::Gcm(gcm_record(&Outcome::Expired, &context("t")));
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        producer.send("game", Platform::Gcm, &record),
    )
    .await
    .expect("send must fail, not hang");
    assert!(
        result.is_err(),
        "an unacknowledged record is an error, so its offset is not committed"
    );
}

/// A record Kafka does not acknowledge is retried without end, its message left uncommitted.
/// Before, only a warning per record and retry said so; now `/healthz` names the app's feedback
/// while it lasts (and the warning goes out once a minute per app).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_feedback_is_named_on_healthz() {
    use pusher::pipeline::run::{run, AppSender, Outputs, RunSpec};
    use pusher::push::token_rules::TokenRule;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::Arc;

    let app = format!("fb{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(&topic, 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let dead = TokenRule::Unregistered.apply(&format!("{:064x}", 1));
    let message = json!({"DeviceToken": dead, "Payload": {"aps": {"alert": "hi"}}}).to_string();
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload(&message),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let fake = common::start_fake(common::FakeOptions::default()).await;
    let sender = common::sender(common::config(&fake, fake.tls_url(), common::token_auth()));
    // Nothing listens there; records time out quickly.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let feedback = FeedbackProducer::with_config(
        &nowhere.to_string(),
        DEFAULT_TOPIC_TEMPLATE,
        &[("message.timeout.ms", "300")],
    )
    .unwrap();
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        format!("group-{app}"),
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.shutdown_timeout = Duration::ZERO;
    let outputs = Outputs {
        feedback: Some(Arc::new(feedback)),
        ..Outputs::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let pipeline = tokio::spawn(run(
        spec,
        std::collections::HashMap::from([(app.clone(), AppSender::apns(sender))]),
        outputs,
        stop.clone(),
    ));
    let component = format!("feedback apns {app}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pusher::telemetry::health::problems().contains_key(&component) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for /healthz to name {component}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), pipeline)
        .await
        .expect("the pipeline stops")
        .unwrap()
        .unwrap();
    assert_eq!(summary.finished, 0, "nothing finished without its feedback");
}

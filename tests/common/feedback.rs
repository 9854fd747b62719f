//! Reading a feedback topic back (shared by the pipeline, fault and hostile-input tests).

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use std::time::{Duration, Instant};

/// The payloads on `topic`, read from the start by a fresh group until `expected` have arrived
/// or `within` has passed; then half a second more, to be sure no extra record arrives.
pub fn read_feedback(brokers: &str, topic: &str, expected: u64, within: Duration) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("fb-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + within;
    while (records.len() as u64) < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    let extra = consumer.poll(Duration::from_millis(500));
    if expected > 0 {
        assert!(
            extra.is_none(),
            "more feedback records on {topic} than {expected}"
        );
    } else {
        // A topic that never got a record does not exist: polling it reports an error.
        assert!(
            !matches!(extra, Some(Ok(_))),
            "a feedback record on {topic}, none expected"
        );
    }
    records
}

/// The same, each record parsed as JSON.
pub fn read_feedback_json(
    brokers: &str,
    topic: &str,
    expected: u64,
    within: Duration,
) -> Vec<serde_json::Value> {
    read_feedback(brokers, topic, expected, within)
        .iter()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect()
}

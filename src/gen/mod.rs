//! `pusher gen`: seeded generator of the seed system's Kafka push messages (DESIGN.md §4),
//! as JSON lines or straight into Kafka. The same `GenConfig` (seed included) always gives the
//! same bytes, and every message says which `TokenRule` its token falls under, so the bench
//! knows in advance which pushes must fail.

pub mod kafka;
mod text;

use crate::push::apns::PushType;
use crate::push::token_rules::TokenRule;
use crate::push::Platform;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::str::FromStr;
use text::TextPool;

/// Largest `--payload-size` accepted (the fakes and the pusher reject far less; this only
/// stops a typo from allocating gigabytes).
pub const MAX_PAYLOAD_SIZE: usize = 1 << 20;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    pub platform: Platform,
    pub count: u64,
    pub seed: u64,
    /// Share of messages whose token the fake servers treat as invalid (Unregistered,
    /// BadToken, WrongTopic in equal parts).
    pub invalid_ratio: f64,
    /// Share of messages whose token fails once, then succeeds (UnavailableOnce, ThrottledOnce).
    pub retry_ratio: f64,
    /// App (game) name: in the metadata and the default Kafka topic `push-<app>_<platform>`.
    pub app: String,
    /// Target size in bytes of the push payload (APNs `Payload`; GCM `notification` + `data`),
    /// padded with text; `None` = natural size (about 150 bytes).
    pub payload_size: Option<Mix<usize>>,
    /// APNs only: the `push_type` mix; `None` = no `push_type` field, as the seed wrote.
    pub push_type: Option<Mix<PushType>>,
    /// GCM only: write `"dry_run":true`.
    pub dry_run: bool,
    /// Web push only: the push service the subscriptions point at (`pusher mock webpush`).
    pub webpush_origin: String,
}

/// Where generated web push subscriptions point by default: `pusher mock webpush`'s TLS port.
pub const DEFAULT_WEBPUSH_ORIGIN: &str = "https://127.0.0.1:8445";

impl GenConfig {
    /// Defaults for `platform`: 1000 messages, seed 0, all tokens valid, app "game".
    pub fn new(platform: Platform) -> GenConfig {
        GenConfig {
            platform,
            count: 1000,
            seed: 0,
            invalid_ratio: 0.0,
            retry_ratio: 0.0,
            app: "game".to_string(),
            payload_size: None,
            push_type: None,
            dry_run: false,
            webpush_origin: DEFAULT_WEBPUSH_ORIGIN.to_string(),
        }
    }

    /// The Kafka topic the seed's pusher reads this app's messages from.
    pub fn default_topic(&self) -> String {
        format!("push-{}_{}", self.app, self.platform)
    }

    pub fn validate(&self) -> Result<(), GenError> {
        if self.count == 0 {
            return Err(GenError::Invalid("count must be at least 1".into()));
        }
        for (name, r) in [
            ("invalid ratio", self.invalid_ratio),
            ("retry ratio", self.retry_ratio),
        ] {
            check_ratio(name, r)?;
        }
        if self.invalid_ratio + self.retry_ratio > 1.0 {
            return Err(GenError::Invalid(format!(
                "invalid ratio {} + retry ratio {} is over 1",
                self.invalid_ratio, self.retry_ratio
            )));
        }
        if self.push_type.is_some() && self.platform != Platform::Apns {
            return Err(GenError::Invalid(
                "push types are for APNs only (--platform apns)".into(),
            ));
        }
        if !is_http_url(&self.webpush_origin) {
            return Err(GenError::Invalid(format!(
                "web push origin {:?} must be an http:// or https:// URL (it is written into \
                 each subscription's endpoint as it is)",
                self.webpush_origin
            )));
        }
        if self.app.is_empty()
            || !self
                .app
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(GenError::Invalid(format!(
                "app name {:?} must be non-empty letters, digits, '_' or '-'",
                self.app
            )));
        }
        Ok(())
    }
}

/// An http or https URL with a host, and nothing JSON would have to escape (the generator
/// copies the origin into its messages byte for byte: a `"` or `\\` made invalid JSON).
fn is_http_url(s: &str) -> bool {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    let uri = s.parse::<http::Uri>().ok();
    plain
        && uri.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        })
}

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{0}")]
    Invalid(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(
        "{failed} of {sent} messages were not delivered to Kafka (first error: {first_error})"
    )]
    Undelivered {
        sent: u64,
        failed: u64,
        first_error: String,
    },
    #[error("timed out waiting for Kafka: {delivered} of {sent} deliveries confirmed")]
    DeliveryTimeout { sent: u64, delivered: u64 },
    #[error("no answer from Kafka within {waited} ({cause}); is a broker running there? (--kafka-timeout sets the wait)")]
    Unreachable { waited: String, cause: String },
    #[error("Kafka has no topic {topic:?} and does not create topics on first use")]
    UnknownTopic { topic: String },
    #[error("message {index} is {size} bytes, over a Kafka producer's limit of 1,000,000 bytes (librdkafka's message.max.bytes): stopped there; use a smaller --payload-size")]
    TooLarge { index: u64, size: usize },
}

fn check_ratio(name: &str, r: f64) -> Result<(), GenError> {
    if (0.0..=1.0).contains(&r) {
        Ok(())
    } else {
        Err(GenError::Invalid(format!(
            "{name} {r} is not between 0 and 1"
        )))
    }
}

/// A weighted choice: `300` (always 300) or `200:0.5,1000:0.4,3500:0.1`. Weights need not
/// sum to 1; they are relative.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix<T> {
    /// (value, cumulative weight), the last cumulative weight is the total.
    choices: Vec<(T, f64)>,
}

impl<T: Copy> Mix<T> {
    pub fn single(value: T) -> Mix<T> {
        Mix {
            choices: vec![(value, 1.0)],
        }
    }

    /// The values a pick can return (one of weight 0 never is).
    pub fn values(&self) -> impl Iterator<Item = T> + '_ {
        let mut before = 0.0;
        self.choices.iter().filter_map(move |&(value, cumulative)| {
            let weight = cumulative - before;
            before = cumulative;
            (weight > 0.0).then_some(value)
        })
    }

    pub fn pick(&self, rng: &mut SmallRng) -> T {
        let first = self.choices[0].0;
        if self.choices.len() == 1 {
            return first;
        }
        let total = self.choices[self.choices.len() - 1].1;
        let x = rng.random::<f64>() * total;
        self.choices
            .iter()
            .find(|(_, cum)| x < *cum)
            .map_or(first, |(v, _)| *v)
    }
}

/// A value a `Mix` can hold, with the parse error wording.
pub trait MixValue: Sized + Copy {
    fn parse_value(s: &str) -> Result<Self, String>;
}

impl MixValue for usize {
    fn parse_value(s: &str) -> Result<usize, String> {
        match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAYLOAD_SIZE).contains(&n) => Ok(n),
            _ => Err(format!(
                "size {s:?} is not a whole number of bytes from 1 to {MAX_PAYLOAD_SIZE}"
            )),
        }
    }
}

impl MixValue for PushType {
    fn parse_value(s: &str) -> Result<PushType, String> {
        PushType::parse(s).ok_or_else(|| format!("unknown push type {s:?}"))
    }
}

impl<T: MixValue> FromStr for Mix<T> {
    type Err = GenError;
    fn from_str(s: &str) -> Result<Mix<T>, GenError> {
        let bad = |why: String| GenError::Invalid(format!("mix {s:?}: {why}"));
        let mut choices = Vec::new();
        let mut total = 0.0;
        for part in s.split(',') {
            let (value, weight) = match part.split_once(':') {
                Some((v, w)) => {
                    let w: f64 = w
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("weight {w:?} is not a number")))?;
                    (v, w)
                }
                None => (part, 1.0),
            };
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(bad(format!("weight {weight} must be 0 or more")));
            }
            total += weight;
            choices.push((T::parse_value(value.trim()).map_err(bad)?, total));
        }
        if total <= 0.0 {
            return Err(bad("the weights sum to 0".into()));
        }
        Ok(Mix { choices })
    }
}

/// One generated Kafka message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedMessage {
    /// The JSON value, without a newline.
    pub bytes: Vec<u8>,
    pub token: String,
    /// The fake servers' rule this token falls under; `None` = the push must succeed.
    pub rule: Option<TokenRule>,
}

const INVALID_RULES: [TokenRule; 3] = [
    TokenRule::Unregistered,
    TokenRule::BadToken,
    TokenRule::WrongTopic,
];
const RETRY_RULES: [TokenRule; 2] = [TokenRule::UnavailableOnce, TokenRule::ThrottledOnce];
const HEX: &[u8; 16] = b"0123456789abcdef";
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Generates `config.count` messages. An `Iterator` of `GeneratedMessage`s; `write_next`
/// is the allocation-free form the CLI uses.
pub struct Generator {
    config: GenConfig,
    rng: SmallRng,
    texts: TextPool,
    remaining: u64,
    /// `"metadata":{...}` member, the same for every message of a run.
    metadata: String,
    token: Vec<u8>,
    /// Web push: each key slot's `"keys":{...}` member, computed on first use.
    webpush_keys: Vec<Option<String>>,
}

impl Generator {
    pub fn new(config: GenConfig) -> Result<Generator, GenError> {
        config.validate()?;
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let texts = TextPool::new(&mut rng);
        // One jobId per run, like the seed's create_bench.py: a run is one campaign.
        let job_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let metadata =
            serde_json::json!({"jobId": job_id.to_string(), "app": config.app}).to_string();
        Ok(Generator {
            remaining: config.count,
            config,
            rng,
            texts,
            metadata: format!("\"metadata\":{metadata}"),
            token: Vec::with_capacity(160),
            webpush_keys: Vec::new(),
        })
    }

    pub fn config(&self) -> &GenConfig {
        &self.config
    }

    /// The token of the message last written.
    pub fn last_token(&self) -> &str {
        // Tokens are built from ASCII tables only.
        std::str::from_utf8(&self.token).unwrap_or("")
    }

    /// Appends the next message (no newline) to `out` and returns its token's rule, or
    /// `None` when all `count` messages are done.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> Option<Option<TokenRule>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let rule = self.pick_rule();
        self.make_token(rule);
        match self.config.platform {
            Platform::Apns => self.write_apns(out),
            Platform::Gcm => self.write_gcm(out),
            Platform::WebPush => self.write_webpush(out),
        }
        Some(rule)
    }

    fn pick_rule(&mut self) -> Option<TokenRule> {
        let (invalid, retry) = (self.config.invalid_ratio, self.config.retry_ratio);
        if invalid == 0.0 && retry == 0.0 {
            return None;
        }
        let x: f64 = self.rng.random();
        if x < invalid {
            Some(INVALID_RULES[self.rng.random_range(0..INVALID_RULES.len())])
        } else if x < invalid + retry {
            Some(RETRY_RULES[self.rng.random_range(0..RETRY_RULES.len())])
        } else {
            None
        }
    }

    /// APNs: 64 hex characters. FCM: `<22 chars>:APA91b<123 chars>` (152), base64url like
    /// real registration tokens. The first four characters carry the rule's prefix.
    fn make_token(&mut self, rule: Option<TokenRule>) {
        let t = &mut self.token;
        t.clear();
        match self.config.platform {
            // Web push: the subscription id (the endpoint's last segment), hex like APNs.
            Platform::Apns | Platform::WebPush => {
                for _ in 0..4 {
                    let mut bits = self.rng.random::<u64>();
                    for _ in 0..16 {
                        t.push(HEX[(bits & 15) as usize]);
                        bits >>= 4;
                    }
                }
            }
            Platform::Gcm => {
                push_base64url(t, &mut self.rng, 22);
                t.extend_from_slice(b":APA91b");
                push_base64url(t, &mut self.rng, 123);
            }
        }
        match rule {
            Some(rule) => t[..4].copy_from_slice(rule.prefix().as_bytes()),
            // A random token may start like a rule's prefix (1 in 65536 for hex); 'f' starts none.
            None if TokenRule::of(std::str::from_utf8(t).unwrap_or("")).is_some() => t[0] = b'f',
            None => {}
        }
    }

    // The messages are hand-built JSON, not serde: every piece is a fixed ASCII literal, a
    // token from ASCII tables, or a pool text escaped once by serde_json when the pool was
    // built. Serialising a struct per message would allocate and re-escape the same texts for
    // every message; this path must write over a million messages a second.
    fn write_apns(&mut self, out: &mut Vec<u8>) {
        let push_type = self
            .config
            .push_type
            .as_ref()
            .map(|m| m.pick(&mut self.rng));
        let target = self
            .config
            .payload_size
            .as_ref()
            .map(|m| m.pick(&mut self.rng));
        out.extend_from_slice(b"{\"DeviceToken\":\"");
        out.extend_from_slice(&self.token);
        out.extend_from_slice(b"\",\"Payload\":");
        let payload_start = out.len();
        match push_type {
            Some(PushType::Background) => {
                out.extend_from_slice(b"{\"aps\":{\"content-available\":1},\"sync\":");
                out.extend_from_slice(self.texts.pick(&mut self.rng).0.as_bytes());
            }
            _ => {
                let (title, body) = self.texts.pick(&mut self.rng);
                out.extend_from_slice(b"{\"aps\":{\"alert\":{\"title\":");
                out.extend_from_slice(title.as_bytes());
                out.extend_from_slice(b",\"body\":");
                out.extend_from_slice(body.as_bytes());
                out.extend_from_slice(b"},\"sound\":\"default\",\"badge\":");
                push_u64(out, self.rng.random_range(1..100));
                out.push(b'}');
            }
        }
        self.pad(out, payload_start, target, 1);
        out.extend_from_slice(b"},\"push_expiry\":0,");
        out.extend_from_slice(self.metadata.as_bytes());
        if let Some(push_type) = push_type {
            out.extend_from_slice(b",\"push_type\":\"");
            out.extend_from_slice(push_type.as_str().as_bytes());
            // Apple requires priority 5 (or 1) for background pushes.
            let priority: &[u8] = if push_type == PushType::Background {
                b"\",\"priority\":5"
            } else {
                b"\",\"priority\":10"
            };
            out.extend_from_slice(priority);
        }
        out.push(b'}');
    }

    fn write_gcm(&mut self, out: &mut Vec<u8>) {
        let target = self
            .config
            .payload_size
            .as_ref()
            .map(|m| m.pick(&mut self.rng));
        out.extend_from_slice(b"{\"to\":\"");
        out.extend_from_slice(&self.token);
        out.extend_from_slice(b"\",\"notification\":{\"title\":");
        let start = out.len() - b"{\"title\":".len();
        let (title, body) = self.texts.pick(&mut self.rng);
        out.extend_from_slice(title.as_bytes());
        out.extend_from_slice(b",\"body\":");
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b"},\"data\":{\"type\":\"invite\",\"level\":");
        // A number, not a string: the seed dropped non-string data; we must not.
        push_u64(out, self.rng.random_range(1..200));
        // `"data":` is not part of the payload size (parse_gcm counts the two values only).
        self.pad(out, start, target.map(|t| t + b",\"data\":".len()), 1);
        out.extend_from_slice(b"},\"priority\":\"high\",\"time_to_live\":3600,\"push_expiry\":0,");
        out.extend_from_slice(self.metadata.as_bytes());
        if self.config.dry_run {
            out.extend_from_slice(b",\"dry_run\":true");
        }
        out.push(b'}');
    }

    /// A web push message (DESIGN.md §11) to a subscription at the configured origin whose
    /// keys the fake push service can recompute from its id (`push::webpush::generated_keys`).
    fn write_webpush(&mut self, out: &mut Vec<u8>) {
        let target = self
            .config
            .payload_size
            .as_ref()
            .map(|m| m.pick(&mut self.rng));
        let id = std::str::from_utf8(&self.token).unwrap_or_default();
        let slot = crate::push::webpush::key_slot(id) as usize;
        if self.webpush_keys.len() <= slot {
            self.webpush_keys
                .resize(crate::push::webpush::KEY_SLOTS as usize, None);
        }
        let keys = self.webpush_keys[slot].get_or_insert_with(|| {
            let keys = crate::push::webpush::slot_public_keys(slot as u32);
            format!(
                "\"keys\":{{\"p256dh\":\"{}\",\"auth\":\"{}\"}}",
                keys.p256dh, keys.auth
            )
        });
        out.extend_from_slice(b"{\"subscription\":{\"endpoint\":\"");
        out.extend_from_slice(self.config.webpush_origin.trim_end_matches('/').as_bytes());
        out.extend_from_slice(crate::push::webpush::FAKE_PATH.as_bytes());
        out.extend_from_slice(&self.token);
        out.extend_from_slice(b"\",");
        out.extend_from_slice(keys.as_bytes());
        out.extend_from_slice(b"},\"payload\":");
        let start = out.len();
        out.extend_from_slice(b"{\"title\":");
        let (title, body) = self.texts.pick(&mut self.rng);
        out.extend_from_slice(title.as_bytes());
        out.extend_from_slice(b",\"body\":");
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b",\"data\":{\"type\":\"invite\",\"level\":");
        push_u64(out, self.rng.random_range(1..200));
        out.push(b'}');
        self.pad(out, start, target, 1);
        out.extend_from_slice(b"},\"ttl\":3600,\"urgency\":\"high\",\"push_expiry\":0,");
        out.extend_from_slice(self.metadata.as_bytes());
        out.push(b'}');
    }

    /// Adds `,"filler":"<text>"` so that the bytes from `start` to the end, plus `closing`
    /// bytes still to come, reach `target`. Does nothing when already there.
    fn pad(&mut self, out: &mut Vec<u8>, start: usize, target: Option<usize>, closing: usize) {
        const OVERHEAD: usize = b",\"filler\":\"\"".len();
        let Some(target) = target else { return };
        let now = out.len() - start + closing;
        if target < now + OVERHEAD {
            return;
        }
        out.extend_from_slice(b",\"filler\":\"");
        self.texts
            .push_filler(out, target - now - OVERHEAD, &mut self.rng);
        out.push(b'"');
    }
}

impl Iterator for Generator {
    type Item = GeneratedMessage;
    fn next(&mut self) -> Option<GeneratedMessage> {
        let mut bytes = Vec::with_capacity(512);
        let rule = self.write_next(&mut bytes)?;
        Some(GeneratedMessage {
            bytes,
            token: self.last_token().to_string(),
            rule,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

fn push_base64url(out: &mut Vec<u8>, rng: &mut SmallRng, len: usize) {
    let mut bits = 0u64;
    for i in 0..len {
        // Ten 6-bit characters per 64-bit draw.
        if i % 10 == 0 {
            bits = rng.random();
        }
        out.push(BASE64URL[(bits & 63) as usize]);
        bits >>= 6;
    }
}

/// Decimal digits of `n` (std's formatting machinery costs more on this path).
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parsing_and_picking() {
        let mix: Mix<usize> = "200:0.5,1000:0.4,3500:0.1".parse().expect("valid");
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen: std::collections::HashMap<usize, u32> = Default::default();
        for _ in 0..10_000 {
            *seen.entry(mix.pick(&mut rng)).or_default() += 1;
        }
        assert_eq!(seen.len(), 3);
        assert!((4500..5500).contains(&seen[&200]), "{seen:?}");
        assert!((500..1500).contains(&seen[&3500]), "{seen:?}");
        assert_eq!(
            "300".parse::<Mix<usize>>().expect("valid"),
            Mix::single(300)
        );
        let types: Mix<PushType> = "alert:3,background:1".parse().expect("valid");
        assert!(types
            .choices
            .iter()
            .any(|(t, _)| *t == PushType::Background));
        // A weight of 0 is never picked: it is no value of the mix.
        let sizes: Mix<usize> = "5000:0,200:1,1000:0,3500:2".parse().expect("valid");
        assert_eq!(sizes.values().collect::<Vec<_>>(), [200, 3500]);
        for bad in ["", "x", "300:-1", "300:0", "300:abc", "0", "200:1,,"] {
            assert!(bad.parse::<Mix<usize>>().is_err(), "{bad:?} accepted");
        }
    }
}

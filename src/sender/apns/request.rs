//! Building an APNs request is a pure function: notification + context -> `http::Request<()>`
//! (the body is the notification's payload `Bytes`, sent as is). Everything APNs would refuse
//! for the request's own sake is refused here first, before a stream is spent.

use crate::push::apns::{
    payload_limit, valid_apns_id, valid_priority, valid_token, ApnsNotification, PushType,
    MAX_COLLAPSE_ID,
};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

pub const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
pub const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
pub const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
pub const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
pub const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
pub const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

/// What does not change from one request to the next, parsed once.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `apns-topic` when the notification names none.
    pub default_topic: Option<HeaderValue>,
    /// Token auth needs a topic on every request; certificate auth can do without (APNs
    /// then uses the certificate's subject).
    pub topic_required: bool,
}

/// Why a notification cannot become a request. Such a push is `Outcome::Malformed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Holds the token's length only: tokens are not logged.
    #[error("device token ({0} characters) is not hex, or is empty or longer than 200 characters")]
    BadToken(usize),
    #[error("payload is {size} bytes, over the {limit}-byte limit")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("payload is empty")]
    PayloadEmpty,
    #[error("collapse id is {0} bytes, over the 64-byte limit")]
    CollapseIdTooLong(usize),
    #[error("priority {0} is not 10, 5 or 1")]
    BadPriority(u8),
    #[error("apns-id {0:?} is not a canonical UUID")]
    BadApnsId(String),
    #[error("no topic: give one per notification or a default topic (token auth needs one)")]
    MissingTopic,
    #[error("{header} value is not a valid HTTP header value")]
    BadHeaderValue { header: &'static str },
    /// A message's own topic without the suffix its push type needs: APNs would answer
    /// `DeviceTokenNotForTopic`, which reads as a dead token and deletes a good one. (A Kafka
    /// message's parse refuses it first; this holds for notifications built otherwise.)
    #[error("topic does not end with {suffix:?}, which a {push_type} push needs")]
    TopicNotForPushType {
        push_type: &'static str,
        suffix: &'static str,
    },
}

impl RequestError {
    /// A short, bounded label (the `Malformed` reason).
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::BadToken(_) => "BadDeviceToken",
            RequestError::PayloadTooLarge { .. } => "PayloadTooLarge",
            RequestError::PayloadEmpty => "PayloadEmpty",
            RequestError::CollapseIdTooLong(_) => "BadCollapseId",
            RequestError::BadPriority(_) => "BadPriority",
            RequestError::BadApnsId(_) => "BadMessageId",
            RequestError::MissingTopic => "MissingTopic",
            RequestError::BadHeaderValue { .. } => "BadHeaderValue",
            RequestError::TopicNotForPushType { .. } => "BadTopic",
        }
    }
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `POST /3/device/<token>` with every `apns-*` header the notification sets.
/// `authorization` is the cached `bearer <jwt>` value under token auth.
pub fn build_request(
    n: &ApnsNotification,
    ctx: &RequestContext,
    authorization: Option<HeaderValue>,
) -> Result<Request<()>, RequestError> {
    check(n)?;
    let path = PathAndQuery::try_from(format!("/3/device/{}", n.token))
        .map_err(|_| RequestError::BadToken(n.token.len()))?;
    let uri = Uri::builder()
        .scheme(ctx.scheme.clone())
        .authority(ctx.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|_| RequestError::BadToken(n.token.len()))?;

    let mut headers = HeaderMap::with_capacity(10);
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(n.payload.len()));
    if let Some(auth) = authorization {
        headers.insert(AUTHORIZATION, auth);
    }
    let push_type = n.effective_push_type();
    match (&n.topic, &ctx.default_topic) {
        // The message's own topic is taken as it is (its producer chose it), if it fits the
        // push type.
        (Some(topic), _) => {
            if let Some(suffix) = push_type.topic_suffix().filter(|s| !topic.ends_with(s)) {
                return Err(RequestError::TopicNotForPushType {
                    push_type: push_type.as_str(),
                    suffix,
                });
            }
            headers.insert(APNS_TOPIC, value(topic, "apns-topic")?);
        }
        (None, Some(topic)) => {
            headers.insert(APNS_TOPIC, topic_for(topic, push_type)?);
        }
        (None, None) if ctx.topic_required => return Err(RequestError::MissingTopic),
        (None, None) => {}
    }
    headers.insert(APNS_PUSH_TYPE, HeaderValue::from_static(push_type.as_str()));
    if let Some(priority) = n.effective_priority(push_type) {
        // `check` allowed only 10, 5 and 1.
        let value = match priority {
            10 => "10",
            5 => "5",
            _ => "1",
        };
        headers.insert(APNS_PRIORITY, HeaderValue::from_static(value));
    }
    if let Some(expiration) = n.expiration {
        headers.insert(APNS_EXPIRATION, HeaderValue::from(expiration));
    }
    if let Some(collapse_id) = &n.collapse_id {
        headers.insert(APNS_COLLAPSE_ID, value(collapse_id, "apns-collapse-id")?);
    }
    if let Some(id) = &n.apns_id {
        headers.insert(APNS_ID, value(id, "apns-id")?);
    }

    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The app's default topic (its bundle id) for `push_type`: Apple wants `<bundle>.voip` for a
/// voip push and so on (protocols.md §1.2), and answers 400 `DeviceTokenNotForTopic` to the
/// bare bundle id, which reads as a dead token and deleted good ones. A default that already
/// carries the suffix is kept.
fn topic_for(default: &HeaderValue, push_type: PushType) -> Result<HeaderValue, RequestError> {
    let Some(suffix) = push_type.topic_suffix() else {
        return Ok(default.clone());
    };
    if default.as_bytes().ends_with(suffix.as_bytes()) {
        return Ok(default.clone());
    }
    let mut topic = Vec::with_capacity(default.len() + suffix.len());
    topic.extend_from_slice(default.as_bytes());
    topic.extend_from_slice(suffix.as_bytes());
    HeaderValue::from_bytes(&topic).map_err(|_| RequestError::BadHeaderValue {
        header: "apns-topic",
    })
}

/// The checks APNs would otherwise answer with a 400/413.
pub fn check(n: &ApnsNotification) -> Result<(), RequestError> {
    if !valid_token(&n.token) {
        return Err(RequestError::BadToken(n.token.len()));
    }
    let limit = payload_limit(n.push_type);
    if n.payload.len() > limit {
        return Err(RequestError::PayloadTooLarge {
            size: n.payload.len(),
            limit,
        });
    }
    if n.payload.is_empty() {
        return Err(RequestError::PayloadEmpty);
    }
    if let Some(c) = &n.collapse_id {
        if c.len() > MAX_COLLAPSE_ID {
            return Err(RequestError::CollapseIdTooLong(c.len()));
        }
    }
    if let Some(p) = n.priority {
        if !valid_priority(p) {
            return Err(RequestError::BadPriority(p));
        }
    }
    if let Some(id) = &n.apns_id {
        if !valid_apns_id(id) {
            return Err(RequestError::BadApnsId(id.clone()));
        }
    }
    Ok(())
}

fn value(s: &str, header: &'static str) -> Result<HeaderValue, RequestError> {
    HeaderValue::from_str(s).map_err(|_| RequestError::BadHeaderValue { header })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::apns::PushType;

    fn ctx(default_topic: Option<&str>, topic_required: bool) -> RequestContext {
        RequestContext {
            scheme: Scheme::HTTPS,
            authority: Authority::from_static("api.sandbox.push.apple.com"),
            default_topic: default_topic.map(|t| HeaderValue::from_str(t).unwrap()),
            topic_required,
        }
    }

    fn token() -> String {
        "0a".repeat(32)
    }

    fn header<'a>(r: &'a Request<()>, name: &str) -> Option<&'a str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn every_header_is_set() {
        let mut n = ApnsNotification::new(token(), &b"{\"aps\":{\"alert\":\"hi\"}}"[..]);
        n.topic = Some("com.example.app".into());
        n.push_type = Some(PushType::Background);
        n.priority = Some(5);
        n.expiration = Some(1_700_000_000);
        n.collapse_id = Some("c".repeat(64));
        n.apns_id = Some("123e4567-e89b-12d3-a456-426614174000".into());
        let auth = HeaderValue::from_static("bearer x.y.z");
        let r = build_request(&n, &ctx(Some("ignored.default"), true), Some(auth)).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(
            r.uri().to_string(),
            format!("https://api.sandbox.push.apple.com/3/device/{}", token())
        );
        let want = [
            ("content-type", Some("application/json")),
            ("content-length", Some("22")),
            ("authorization", Some("bearer x.y.z")),
            ("apns-topic", Some("com.example.app")),
            ("apns-push-type", Some("background")),
            ("apns-priority", Some("5")),
            ("apns-expiration", Some("1700000000")),
            ("apns-collapse-id", Some(&*"c".repeat(64))),
            ("apns-id", Some("123e4567-e89b-12d3-a456-426614174000")),
        ];
        for (name, value) in want {
            assert_eq!(header(&r, name), value, "{name}");
        }
        assert_eq!(r.headers().len(), want.len());
    }

    #[test]
    fn optional_headers_are_left_out_and_default_topic_used() {
        let n = ApnsNotification::new(token(), &b"{}"[..]);
        let r = build_request(&n, &ctx(Some("com.example.app"), true), None).unwrap();
        assert_eq!(header(&r, "apns-topic"), Some("com.example.app"));
        for name in [
            "authorization",
            "apns-priority",
            "apns-expiration",
            "apns-collapse-id",
            "apns-id",
        ] {
            assert_eq!(header(&r, name), None, "{name}");
        }
        // Certificate auth may leave the topic to the certificate.
        let r = build_request(&n, &ctx(None, false), None).unwrap();
        assert_eq!(header(&r, "apns-topic"), None);
    }

    /// Strict endpoints refuse a request without `apns-push-type` (InvalidPushType): one is
    /// always sent, with a priority that agrees with it.
    #[test]
    fn push_type_is_always_sent_and_priority_follows_it() {
        // payload, message push_type, message priority, header sent, priority sent
        type Case<'a> = (
            &'a str,
            Option<PushType>,
            Option<u8>,
            &'a str,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (r#"{"aps":{"alert":"hi"}}"#, None, None, "alert", None),
            (
                r#"{"aps":{"content-available":1}}"#,
                None,
                None,
                "background",
                Some("5"),
            ),
            (
                r#"{ "aps" : { "content-available" : 1 }, "M": {"k": 1} }"#,
                None,
                None,
                "background",
                Some("5"),
            ),
            // Anything beside content-available makes it visible: an alert.
            (
                r#"{"aps":{"content-available":1,"sound":"a"}}"#,
                None,
                None,
                "alert",
                None,
            ),
            (
                r#"{"aps":{"content-available":0}}"#,
                None,
                None,
                "alert",
                None,
            ),
            (r#"{"x":"content-available"}"#, None, None, "alert", None),
            ("not json content-available", None, None, "alert", None),
            // The message's own type and priority win.
            (
                r#"{"aps":{"content-available":1}}"#,
                Some(PushType::Voip),
                None,
                "voip",
                None,
            ),
            (
                r#"{"aps":{"alert":"hi"}}"#,
                Some(PushType::Background),
                None,
                "background",
                Some("5"),
            ),
            (
                r#"{"aps":{"content-available":1}}"#,
                None,
                Some(1),
                "background",
                Some("1"),
            ),
            // Apple wants 5 for background pushes: an explicit 10 is lowered.
            (
                r#"{"aps":{"content-available":1}}"#,
                Some(PushType::Background),
                Some(10),
                "background",
                Some("5"),
            ),
        ];
        for (payload, push_type, priority, want_type, want_priority) in cases {
            let mut n = ApnsNotification::new(token(), payload.as_bytes().to_vec());
            n.push_type = *push_type;
            n.priority = *priority;
            let r = build_request(&n, &ctx(Some("t"), true), None).unwrap();
            assert_eq!(header(&r, "apns-push-type"), Some(*want_type), "{payload}");
            assert_eq!(header(&r, "apns-priority"), *want_priority, "{payload}");
        }
    }

    /// Apple wants `<bundle>.voip` for voip and so on; the bare bundle id draws 400
    /// DeviceTokenNotForTopic, which deletes the token.
    #[test]
    fn the_default_topic_takes_the_push_types_suffix() {
        let cases = [
            (PushType::Alert, "com.example.app", "com.example.app"),
            (PushType::Background, "com.example.app", "com.example.app"),
            (PushType::Voip, "com.example.app", "com.example.app.voip"),
            (
                PushType::Voip,
                "com.example.app.voip",
                "com.example.app.voip",
            ),
            (
                PushType::Complication,
                "com.example.app",
                "com.example.app.complication",
            ),
            (
                PushType::FileProvider,
                "com.example.app",
                "com.example.app.pushkit.fileprovider",
            ),
            (
                PushType::Location,
                "com.example.app",
                "com.example.app.location-query",
            ),
            (
                PushType::LiveActivity,
                "com.example.app",
                "com.example.app.push-type.liveactivity",
            ),
            (
                PushType::PushToTalk,
                "com.example.app",
                "com.example.app.voip-ptt",
            ),
            (
                PushType::Widgets,
                "com.example.app",
                "com.example.app.push-type.widgets",
            ),
        ];
        for (push_type, default, want) in cases {
            let mut n = ApnsNotification::new(token(), &b"{}"[..]);
            n.push_type = Some(push_type);
            let r = build_request(&n, &ctx(Some(default), true), None).unwrap();
            assert_eq!(
                header(&r, "apns-topic"),
                Some(want),
                "{push_type:?} {default}"
            );
        }
        // A message's own topic is sent as it is, when it fits the push type; else the
        // message is refused, not sent for a DeviceTokenNotForTopic that deletes its token.
        let mut n = ApnsNotification::new(token(), &b"{}"[..]);
        n.push_type = Some(PushType::Voip);
        n.topic = Some("com.other.app.voip".into());
        let r = build_request(&n, &ctx(Some("com.example.app"), true), None).unwrap();
        assert_eq!(header(&r, "apns-topic"), Some("com.other.app.voip"));
        for push_type in [PushType::Voip, PushType::Widgets] {
            n.push_type = Some(push_type);
            n.topic = Some("com.other.app".into());
            let refused = build_request(&n, &ctx(Some("com.example.app"), true), None);
            assert_eq!(
                refused.map_err(|e| e.kind()).err(),
                Some("BadTopic"),
                "{push_type:?}"
            );
        }
    }

    #[test]
    fn refusals() {
        let ok = || {
            let mut n = ApnsNotification::new(token(), &b"{}"[..]);
            n.topic = Some("t".into());
            n
        };
        type Edit = fn(&mut ApnsNotification);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "non-hex token",
                |n| n.token = "zz".repeat(32),
                "BadDeviceToken",
            ),
            ("empty token", |n| n.token.clear(), "BadDeviceToken"),
            (
                "token with a slash",
                |n| n.token = "ab/cd".into(),
                "BadDeviceToken",
            ),
            (
                "4097-byte payload",
                |n| n.payload = vec![b' '; 4097].into(),
                "PayloadTooLarge",
            ),
            (
                "5121-byte voip payload",
                |n| {
                    n.push_type = Some(PushType::Voip);
                    n.payload = vec![b' '; 5121].into();
                },
                "PayloadTooLarge",
            ),
            (
                "empty payload",
                |n| n.payload = bytes::Bytes::new(),
                "PayloadEmpty",
            ),
            (
                "65-byte collapse id",
                |n| n.collapse_id = Some("c".repeat(65)),
                "BadCollapseId",
            ),
            ("priority 7", |n| n.priority = Some(7), "BadPriority"),
            (
                "apns-id not a UUID",
                |n| n.apns_id = Some("nope".into()),
                "BadMessageId",
            ),
            ("no topic at all", |n| n.topic = None, "MissingTopic"),
            (
                "topic with a newline",
                |n| n.topic = Some("a\nb".into()),
                "BadHeaderValue",
            ),
        ];
        for (what, edit, kind) in cases {
            let mut n = ok();
            edit(&mut n);
            let err = build_request(&n, &ctx(None, true), None).unwrap_err();
            assert_eq!(err.kind(), *kind, "{what}: {err}");
        }
        // The limits themselves are allowed.
        let mut n = ok();
        n.payload = vec![b' '; 4096].into();
        assert!(build_request(&n, &ctx(None, true), None).is_ok());
        n.push_type = Some(PushType::Voip);
        n.topic = Some("t.voip".into());
        n.payload = vec![b' '; 5120].into();
        assert!(build_request(&n, &ctx(None, true), None).is_ok());
    }
}

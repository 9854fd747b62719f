//! Kafka topic names as the seed system spells them: `push-<app>_<platform>` (plus `-single`,
//! `-massive` and other suffixes). The app and platform come from the topic, so these are
//! domain rules: which topics a platform's pusher may read is decided here.

use super::Platform;
use regex::Regex;
use std::sync::OnceLock;

/// The app (game) and platform a topic names, e.g. `push-game_gcm-single` -> ("game", gcm).
pub fn app_from_topic(topic: &str) -> Option<(String, Platform)> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| Regex::new(r"^push-(\w+(?:[_-]\w+)*?)[-_](apns|gcm|webpush)").ok())
        .as_ref()?;
    let caps = re.captures(topic)?;
    let platform = caps.get(2)?.as_str().parse().ok()?;
    Some((caps.get(1)?.as_str().to_string(), platform))
}

/// The topics an app's pusher reads besides the configured ones.
pub fn app_topics(app: &str, platform: Platform) -> [String; 3] {
    let p = platform.as_str();
    [
        format!("push-{app}_{p}"),
        format!("push-{app}_{p}-single"),
        format!("push-{app}_{p}-massive"),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("{topic:?} is a {found} topic; a {wanted} pusher must not consume it (its messages would be lost to the {found} pusher)")]
    OtherPlatform {
        topic: String,
        found: Platform,
        wanted: Platform,
    },
    #[error("{0:?} does not name an app and platform (push-<app>_<apns|gcm|webpush>)")]
    NotAPushTopic(String),
    #[error("regex {0:?} does not say which platform it is for: put (apns|gcm) or the platform's name in it, e.g. ^push-[^-_]+_(apns|gcm)")]
    AmbiguousRegex(String),
}

/// A configured topic (a name, or a regex starting with `^`) narrowed to `platform`, so a
/// pusher never subscribes to the other platform's topics: a group of the APNs pusher that
/// reads `push-game_gcm` would have to refuse and commit them, and the FCM pusher would never
/// see them. A group `(apns|gcm)` (or `(gcm|apns)`, `(?:...)`) becomes the one platform; a
/// regex that names only this platform is kept; anything else is an error naming the topic.
pub fn for_platform(pattern: &str, platform: Platform) -> Result<String, TopicError> {
    if !pattern.starts_with('^') {
        return match app_from_topic(pattern) {
            Some((_, p)) if p == platform => Ok(pattern.to_string()),
            Some((_, found)) => Err(TopicError::OtherPlatform {
                topic: pattern.to_string(),
                found,
                wanted: platform,
            }),
            None => Err(TopicError::NotAPushTopic(pattern.to_string())),
        };
    }
    let ours = platform.as_str();
    let mut narrowed = pattern.to_string();
    for group in ["(apns|gcm)", "(gcm|apns)", "(?:apns|gcm)", "(?:gcm|apns)"] {
        narrowed = narrowed.replace(group, &format!("({ours})"));
    }
    let names = |p: &str| ALL.iter().filter(|q| p.contains(q.as_str())).count();
    match (narrowed.contains(ours), names(&narrowed)) {
        (true, 1) => Ok(narrowed),
        (false, 1) => {
            let found = ALL
                .iter()
                .copied()
                .find(|q| narrowed.contains(q.as_str()))
                .unwrap_or(platform);
            Err(TopicError::OtherPlatform {
                topic: pattern.to_string(),
                found,
                wanted: platform,
            })
        }
        _ => Err(TopicError::AmbiguousRegex(pattern.to_string())),
    }
}

const ALL: [Platform; 3] = [Platform::Apns, Platform::Gcm, Platform::WebPush];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_and_platform_from_topic() {
        let cases = [
            ("push-game_gcm", Some(("game", Platform::Gcm))),
            ("push-game_apns-single", Some(("game", Platform::Apns))),
            ("push-game_apns-massive", Some(("game", Platform::Apns))),
            ("push-my-app_gcm", Some(("my-app", Platform::Gcm))),
            ("push-site_webpush", Some(("site", Platform::WebPush))),
            ("push-my_app_apns", Some(("my_app", Platform::Apns))),
            ("push-game-apns", Some(("game", Platform::Apns))),
            ("other-topic", None),
            ("push-_gcm", None),
            ("push-game", None),
        ];
        for (topic, want) in cases {
            let got = app_from_topic(topic);
            assert_eq!(got.as_ref().map(|(a, p)| (a.as_str(), *p)), want, "{topic}");
        }
    }

    #[test]
    fn topics_are_narrowed_to_the_platform() {
        use Platform::*;
        let ok = [
            ("^push-[^-_]+_(apns|gcm)", Apns, "^push-[^-_]+_(apns)"),
            ("^push-[^-_]+_(apns|gcm)", Gcm, "^push-[^-_]+_(gcm)"),
            ("^push-.*_(?:gcm|apns)$", Gcm, "^push-.*_(gcm)$"),
            ("^push-[a-z]+_apns", Apns, "^push-[a-z]+_apns"),
            ("push-game_gcm", Gcm, "push-game_gcm"),
            ("push-game_apns-single", Apns, "push-game_apns-single"),
        ];
        for (pattern, platform, want) in ok {
            assert_eq!(
                for_platform(pattern, platform).as_deref(),
                Ok(want),
                "{pattern}"
            );
            // The narrowed regex matches this platform's topics and not the other's.
            if let Some(re) = want.strip_prefix('^').map(|_| Regex::new(want).unwrap()) {
                let p = platform.as_str();
                assert!(re.is_match(&format!("push-game_{p}")), "{want}");
                let other = if platform == Apns { "gcm" } else { "apns" };
                assert!(!re.is_match(&format!("push-game_{other}")), "{want}");
            }
        }
        let refused = [
            ("push-game_gcm", Apns, "is a gcm topic"),
            ("^push-.*_gcm", Apns, "is a gcm topic"),
            ("^push-.*", Apns, "does not say which platform"),
            ("^push-.*(apns|gcm|x)", Apns, "does not say which platform"),
            ("game-events", Apns, "does not name an app"),
        ];
        for (pattern, platform, want) in refused {
            let err = for_platform(pattern, platform).unwrap_err().to_string();
            assert!(err.contains(want), "{pattern}: {err}");
        }
    }
}

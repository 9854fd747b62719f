//! Environment names: viper's rule, `PUSHER_` + the key path upper-cased with `.` -> `_`
//! (`queue.brokers` -> `PUSHER_QUEUE_BROKERS`), for every key of the schema; per-app keys
//! with the app in the middle (`PUSHER_APNS_CERTS_<APP>_AUTHKEYPATH`). A `PUSHER_` name under
//! a config section that is no key is an error, as is a near miss of a top-level key; other
//! `PUSHER_` variables (`PUSHER_LOG`, `PUSHER_TEST_KAFKA`, ...) and Kubernetes' service links
//! (`PUSHER_API_SERVICE_HOST`) are not config.

use super::keys::{nearest, Keys, Kind, Leaf, ANY};
use super::schema::SEED_KEYS;
use super::ConfigError;

/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "PUSHER_";

/// Names the seed spelled differently from its key.
const SEED_SPELLINGS: &[(&str, &str)] =
    &[("PUSHER_GRACEFULLSHUTDOWNTIMEOUT", "gracefulShutdownTimeout")];

/// Variables under a config section's prefix that other commands read (clap `env`): not
/// config, so not unknown keys either.
const OTHER_COMMANDS: &[&str] = &[
    "PUSHER_APNS_CERTIFICATE_PASSWORD", // send apns
    "PUSHER_GCM_API_KEY",               // send gcm
];

/// What an environment variable is to the config.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EnvKey {
    /// A key: its path (the app lower-cased) and how its text is read.
    Key(Vec<String>, Kind),
    /// One of the seed's keys that this pusher ignores: what governs that now.
    Seed(&'static str),
    /// A Kubernetes service link (`PUSHER_API_SERVICE_HOST`, `PUSHER_API_PORT_8088_TCP`, ...):
    /// Kubernetes sets them in every pod of the namespace for a Service named `pusher-*`.
    ServiceLink,
    /// Not a config variable.
    Other,
}

pub(super) fn env_name(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("_").to_ascii_uppercase())
}

/// The fixed (not per-app) names, the seed's spellings included.
pub(super) fn fixed_names(keys: &Keys) -> Vec<String> {
    let mut names: Vec<String> = keys
        .leaves()
        .iter()
        .filter(|l| !l.path.iter().any(|s| s == ANY))
        .map(|l| env_name(&l.path))
        .collect();
    names.extend(SEED_SPELLINGS.iter().map(|(name, _)| (*name).to_owned()));
    names
}

/// A per-app key's name split around the app: (`PUSHER_APNS_CERTS_`, `_KEYID`).
fn around_app(leaf: &Leaf) -> Option<(String, String)> {
    let i = leaf.path.iter().position(|s| s == ANY)?;
    let prefix = format!("{}_", env_name(&leaf.path[..i]));
    let rest = &leaf.path[i + 1..];
    let suffix = if rest.is_empty() {
        String::new()
    } else {
        format!("_{}", rest.join("_").to_ascii_uppercase())
    };
    Some((prefix, suffix))
}

/// [`classify_value`] by the name alone (the tests' view of a name).
#[cfg(test)]
pub(super) fn classify(keys: &Keys, name: &str) -> Result<EnvKey, ConfigError> {
    classify_value(keys, name, None)
}

/// What a `PUSHER_` variable is, with its value when known: a service link's name carries the
/// value Kubernetes gives it (an address, a port number, `tcp://IP:port`), so that a typo of a
/// real key that happens to end in `_PORT` (`PUSHER_INVALID_TOKEN_PG_PORT=5433`) is still
/// reported, not ignored.
pub(super) fn classify_value(
    keys: &Keys,
    name: &str,
    value: Option<&str>,
) -> Result<EnvKey, ConfigError> {
    let upper = name.to_ascii_uppercase();
    let Some(rest) = upper.strip_prefix(ENV_PREFIX) else {
        return Ok(EnvKey::Other);
    };
    if OTHER_COMMANDS.contains(&upper.as_str()) {
        return Ok(EnvKey::Other);
    }
    if let Some((_, key)) = SEED_SPELLINGS.iter().find(|(n, _)| *n == upper) {
        if let Some((path, kind)) = keys.lookup(key) {
            return Ok(EnvKey::Key(path, kind));
        }
    }
    let leaves = keys.leaves();
    if let Some(leaf) = leaves
        .iter()
        .find(|l| !l.path.iter().any(|s| s == ANY) && env_name(&l.path) == upper)
    {
        return Ok(EnvKey::Key(leaf.path.clone(), leaf.kind));
    }
    // Per-app: the app name may hold '_', so the field is matched from the end (the longest
    // field that fits).
    let per_app = leaves
        .iter()
        .filter_map(|leaf| {
            let (prefix, suffix) = around_app(leaf)?;
            let app = upper.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
            (!app.is_empty()).then(|| (suffix.len(), leaf, app.to_ascii_lowercase()))
        })
        .max_by_key(|(len, _, _)| *len);
    if let Some((_, leaf, app)) = per_app {
        let path = leaf
            .path
            .iter()
            .map(|s| if s == ANY { app.clone() } else { s.clone() })
            .collect();
        return Ok(EnvKey::Key(path, leaf.kind));
    }
    // Checked after the keys (`PUSHER_INVALIDTOKEN_PG_PORT` is one): a Service named
    // `pusher-api` must not stop every pusher of its namespace with an unknown key.
    if is_service_link(&upper) && value.is_none_or(|v| is_link_value(&upper, v)) {
        return Ok(EnvKey::ServiceLink);
    }
    for (key, now) in SEED_KEYS {
        let seed: Vec<String> = key.split('.').map(str::to_owned).collect();
        let seed = env_name(&seed);
        if upper == seed
            || upper
                .strip_prefix(&seed)
                .is_some_and(|r| r.starts_with('_'))
        {
            return Ok(EnvKey::Seed(now));
        }
    }
    unknown(keys, &leaves, &upper, rest)
}

/// The variables Kubernetes sets for a Service (its name upper-cased, `-` -> `_`):
/// `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT`, `<SVC>_SERVICE_PORT_<PORT NAME>`, `<SVC>_PORT`,
/// `<SVC>_PORT_<n>_<TCP|UDP|SCTP>` and that with `_PROTO`, `_PORT` or `_ADDR`.
pub(super) fn is_service_link(upper: &str) -> bool {
    if upper.len() <= ENV_PREFIX.len() || !upper.starts_with(ENV_PREFIX) {
        return false;
    }
    // From the `_` after `PUSHER`: the service may be named `pusher` itself (`PUSHER_PORT`).
    let tail = &upper[ENV_PREFIX.len() - 1..];
    let named_port = |i: usize| i + "_SERVICE_PORT_".len() < tail.len();
    tail.ends_with("_SERVICE_HOST")
        || tail.ends_with("_SERVICE_PORT")
        || tail.ends_with("_PORT")
        || tail.rfind("_SERVICE_PORT_").is_some_and(named_port)
        || tail.match_indices("_PORT_").any(|(i, m)| {
            let Some((number, rest)) = tail[i + m.len()..].split_once('_') else {
                return false;
            };
            let (protocol, field) = match rest.split_once('_') {
                Some((protocol, field)) => (protocol, Some(field)),
                None => (rest, None),
            };
            !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && matches!(protocol, "TCP" | "UDP" | "SCTP")
                && matches!(field, None | Some("PROTO" | "PORT" | "ADDR"))
        })
}

/// Whether `value` is what Kubernetes sets for a service link named `upper`.
fn is_link_value(upper: &str, value: &str) -> bool {
    let port = |v: &str| v.parse::<u16>().is_ok();
    let url = |v: &str| {
        ["tcp://", "udp://", "sctp://"].iter().any(|scheme| {
            v.strip_prefix(scheme)
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .is_some()
        })
    };
    if upper.ends_with("_SERVICE_HOST") || upper.ends_with("_ADDR") {
        value.parse::<std::net::IpAddr>().is_ok()
    } else if upper.ends_with("_PROTO") {
        matches!(value, "tcp" | "udp" | "sctp" | "TCP" | "UDP" | "SCTP")
    } else if upper.contains("_SERVICE_PORT")
        || upper.ends_with("_TCP_PORT")
        || upper.ends_with("_UDP_PORT")
        || upper.ends_with("_SCTP_PORT")
    {
        port(value)
    } else {
        url(value)
    }
}

/// An unknown `PUSHER_` name: an error when it is under a section or close to a key.
fn unknown(keys: &Keys, leaves: &[Leaf], upper: &str, rest: &str) -> Result<EnvKey, ConfigError> {
    let strip = |n: &str| n.strip_prefix(ENV_PREFIX).unwrap_or(n).to_owned();
    let mut candidates: Vec<String> = fixed_names(keys).iter().map(|n| strip(n)).collect();
    // Per-app names as this one would be with each possible app.
    for leaf in leaves {
        let Some((prefix, suffix)) = around_app(leaf) else {
            continue;
        };
        if let Some(tail) = upper.strip_prefix(&prefix) {
            for (i, _) in tail.match_indices('_') {
                candidates.push(strip(&format!("{prefix}{}{suffix}", &tail[..i])));
            }
        }
    }
    let section = leaves
        .iter()
        .filter(|l| l.path.len() > 1)
        .map(|l| format!("{}_", l.path[0].to_ascii_uppercase()))
        .find(|s| rest.starts_with(s.as_str()));
    let hint = match (nearest(rest, &candidates), section) {
        (Some(near), _) => format!("; did you mean {ENV_PREFIX}{near}?"),
        (None, Some(section)) => {
            let valid: Vec<String> = candidates
                .iter()
                .filter(|c| c.starts_with(&section))
                .map(|c| format!("{ENV_PREFIX}{c}"))
                .collect();
            format!(" (valid here: {})", valid.join(", "))
        }
        (None, None) => return Ok(EnvKey::Other),
    };
    Err(ConfigError::UnknownVariable {
        name: upper.to_owned(),
        hint,
    })
}

//! The config's keys, derived from the schema: `Config::default()` with one entry `*` in each
//! per-app map, serialized to a YAML tree. Its mappings are sections, its other nodes keys, and
//! a key's default value says how an override's text is read ([`Kind`]). The unknown-key check
//! and the environment names both come from this tree.

use super::schema::{
    ApiKey, ApnsCert, Config, DeviceLimitsConfig, GcmCert, Secret, SeedKey, VapidKey, SEED_KEYS,
};
use super::ConfigError;
use serde_yaml_ng::Value;

/// The segment that stands for an app name in a per-app map.
pub(super) const ANY: &str = "*";

/// What type an override's text becomes in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Strings, durations, enums, and every optional key (`None` by default).
    Text,
    /// `"a,b"`.
    List,
    Number,
    Bool,
}

impl Kind {
    pub fn of(default: &Value) -> Kind {
        match default {
            Value::Sequence(_) => Kind::List,
            Value::Number(_) => Kind::Number,
            Value::Bool(_) => Kind::Bool,
            _ => Kind::Text,
        }
    }
}

/// One key: its path (with [`ANY`] for the app of a per-app map) and kind.
#[derive(Debug, Clone)]
pub(super) struct Leaf {
    pub path: Vec<String>,
    pub kind: Kind,
}

/// An unknown key: its dotted path and a hint (`; did you mean X?` or the valid keys).
#[derive(Debug)]
pub(super) struct Unknown {
    pub key: String,
    pub hint: String,
}

pub(super) struct Keys {
    root: Value,
}

impl Keys {
    pub fn new() -> Result<Keys, ConfigError> {
        let mut sample = Config::default();
        sample.apns.certs.insert(ANY.into(), ApnsCert::default());
        sample.gcm.certs.insert(ANY.into(), GcmCert::default());
        sample
            .gcm
            .firebase_credentials
            .insert(ANY.into(), Secret::default());
        sample.api.keys.insert(ANY.into(), ApiKey::default());
        sample.webpush.vapid.insert(ANY.into(), VapidKey::default());
        sample
            .results
            .webhooks
            .insert(ANY.into(), Secret::default());
        sample
            .route
            .limits
            .insert(ANY.into(), DeviceLimitsConfig::default());
        let root =
            serde_yaml_ng::to_value(&sample).map_err(|e| ConfigError::Schema(e.to_string()))?;
        Ok(Keys { root })
    }

    /// The schema as a tree: sections are mappings, keys their default values.
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// Every key, in schema order.
    pub fn leaves(&self) -> Vec<Leaf> {
        fn walk(node: &Value, path: &mut Vec<String>, out: &mut Vec<Leaf>) {
            match node {
                Value::Mapping(map) => {
                    for (k, v) in map {
                        path.push(key_text(k));
                        walk(v, path, out);
                        path.pop();
                    }
                }
                leaf => out.push(Leaf {
                    path: path.clone(),
                    kind: Kind::of(leaf),
                }),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut Vec::new(), &mut out);
        out
    }

    /// A dotted key in any case (`queue.sessiontimeout`, `apns.certs.game.keyid`) as its
    /// path, spelled as the schema spells it (an app segment as given), and its kind.
    pub fn lookup(&self, key: &str) -> Option<(Vec<String>, Kind)> {
        let mut node = &self.root;
        let mut path = Vec::new();
        for segment in key.split('.') {
            let Value::Mapping(map) = node else {
                return None;
            };
            if let Some(any) = map.get(ANY) {
                path.push(segment.to_owned());
                node = any;
                continue;
            }
            let (k, v) = map
                .iter()
                .find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(segment)))?;
            path.push(key_text(k));
            node = v;
        }
        (!node.is_mapping()).then(|| (path, Kind::of(node)))
    }

    /// Checks a YAML tree's keys: the first unknown one is an error; the seed's ignored keys
    /// are collected into `seed`. Values are the deserializer's to check.
    pub fn check(&self, tree: &Value, seed: &mut Vec<SeedKey>) -> Result<(), Unknown> {
        check_node(&self.root, tree, &mut Vec::new(), seed)
    }
}

fn check_node(
    schema: &Value,
    user: &Value,
    path: &mut Vec<String>,
    seed: &mut Vec<SeedKey>,
) -> Result<(), Unknown> {
    let (Value::Mapping(schema), Value::Mapping(user)) = (schema, user) else {
        return Ok(());
    };
    for (k, v) in user {
        let known = child_of(schema, k);
        let k = key_text(k);
        path.push(k.clone());
        match known {
            Some(node) => check_node(node, v, path, seed)?,
            None => {
                let dotted = path.join(".");
                let above_seed_key = SEED_KEYS.iter().any(|(key, _)| {
                    key.strip_prefix(dotted.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                });
                match SEED_KEYS.iter().find(|(key, _)| *key == dotted) {
                    Some((_, now)) => seed.push(SeedKey { key: dotted, now }),
                    // `log:` of `log.level`: only the seed's keys are known below it.
                    None if above_seed_key && v.is_mapping() => {
                        check_node(&Value::Mapping(Default::default()), v, path, seed)?
                    }
                    None => {
                        let mut valid: Vec<String> = schema.keys().map(key_text).collect();
                        if valid.is_empty() {
                            // Under a seed-only section (`log`): the seed's keys there.
                            let parent = format!("{}.", path[..path.len() - 1].join("."));
                            valid = SEED_KEYS
                                .iter()
                                .filter_map(|(key, _)| key.strip_prefix(parent.as_str()))
                                .map(|rest| rest.split('.').next().unwrap_or(rest).to_owned())
                                .collect();
                        }
                        return Err(Unknown {
                            key: dotted,
                            hint: hint(&k, &valid),
                        });
                    }
                }
            }
        }
        path.pop();
    }
    Ok(())
}

/// The schema node under `section` for a key of the file (any key in a per-app map).
pub(super) fn child<'a>(section: &'a Value, key: &Value) -> Option<&'a Value> {
    match section {
        Value::Mapping(map) => child_of(map, key),
        _ => None,
    }
}

fn child_of<'a>(section: &'a serde_yaml_ng::Mapping, key: &Value) -> Option<&'a Value> {
    section
        .get(ANY)
        .or_else(|| section.get(key_text(key).as_str()))
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// The candidate closest to `word` (ignoring case), if it is close enough to be a typo.
pub(super) fn nearest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let most = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| {
            let d = strsim::damerau_levenshtein(&word, &c.to_ascii_lowercase());
            (d, c)
        })
        .filter(|(d, _)| *d <= most)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// `; did you mean X?` when one is close, else the valid choices.
pub(super) fn hint(word: &str, candidates: &[String]) -> String {
    match nearest(word, candidates) {
        Some(near) => format!("; did you mean {near}?"),
        None => format!(" (valid here: {})", candidates.join(", ")),
    }
}

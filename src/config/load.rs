//! Loading: built-in defaults < YAML file < `PUSHER_*` environment < CLI overrides.
//!
//! Layering works on the YAML value tree: the file is parsed into a tree (text keys as
//! written, [`super::raw`]) and its keys checked against the schema, each override is written into it at its key with the type that key
//! needs, and the tree is deserialized once (missing keys take the built-in defaults).

use super::env::{classify_value, EnvKey, ENV_PREFIX};
use super::keys::{hint, Keys, Kind};
use super::schema::{split_list, Config, SeedKey};
use super::ConfigError;
use serde_yaml_ng::{Mapping, Value};
use std::path::Path;

impl Config {
    /// Defaults < the YAML file at `path` < `PUSHER_*` variables from `env`.
    pub fn load(
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::load_with(Some(path), env, &[])
    }

    /// The full layering. `path` `None` skips the file; `overrides` are CLI `(dotted key, value)`
    /// pairs, applied last.
    pub fn load_with(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::load_yaml(&text, &path.display().to_string(), env, overrides)
            }
            None => layer(&Keys::new()?, Value::Null, "(defaults)", env, overrides),
        }
    }

    /// The layering over YAML text already read; `source` names it in errors. (The fuzz
    /// harness drives the loader through here.)
    pub fn load_yaml(
        text: &str,
        source: &str,
        env: impl Iterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let parse_error = |e: serde_yaml_ng::Error| ConfigError::Parse {
            path: source.to_owned(),
            message: e.to_string(),
        };
        let keys = Keys::new()?;
        let mut tree = super::raw::parse(text, &keys).map_err(parse_error)?;
        // `<<: *anchor` merges, so that the merged keys are checked as keys.
        tree.apply_merge().map_err(parse_error)?;
        layer(&keys, tree, source, env, overrides)
    }
}

fn layer(
    keys: &Keys,
    mut tree: Value,
    source: &str,
    env: impl Iterator<Item = (String, String)>,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut seed_keys: Vec<SeedKey> = Vec::new();
    keys.check(&tree, &mut seed_keys)
        .map_err(|u| ConfigError::UnknownKey {
            path: source.to_owned(),
            key: u.key,
            hint: u.hint,
        })?;
    // Which override set which key, so a value the deserializer refuses names its variable.
    let mut origins: Vec<(String, String)> = Vec::new();
    // Sorted so a failure is the same one every run.
    let mut env: Vec<(String, String)> = env
        .filter(|(k, _)| k.to_ascii_uppercase().starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, raw) in &env {
        match classify_value(keys, name, Some(raw))? {
            EnvKey::Key(path, kind) => {
                let at = set_path(&mut tree, &path, typed_value(name, raw, kind)?, name)?;
                origins.push((at, name.clone()));
            }
            EnvKey::Seed(now) => seed_keys.push(SeedKey {
                key: name.clone(),
                now,
            }),
            EnvKey::ServiceLink => {
                tracing::debug!(name = %name, "Kubernetes service link: not config.");
            }
            EnvKey::Other => {}
        }
    }
    for (key, raw) in overrides {
        let (path, kind) = keys
            .lookup(key)
            .ok_or_else(|| ConfigError::UnknownVariable {
                name: key.clone(),
                hint: hint(key, &dotted_keys(keys)),
            })?;
        let at = set_path(&mut tree, &path, typed_value(key, raw, kind)?, key)?;
        origins.push((at, key.clone()));
    }
    let mut config = if tree.is_null() {
        Config::default()
    } else {
        deserialize(&tree, source, &origins)?
    };
    config.seed_keys = seed_keys;
    Ok(config)
}

fn dotted_keys(keys: &Keys) -> Vec<String> {
    keys.leaves().iter().map(|l| l.path.join(".")).collect()
}

/// Deserializes from text so serde_yaml_ng's errors name the dotted key at fault; a key an
/// override set is named by that override.
fn deserialize(
    tree: &Value,
    source: &str,
    origins: &[(String, String)],
) -> Result<Config, ConfigError> {
    let text = serde_yaml_ng::to_string(tree).map_err(|e| ConfigError::Parse {
        path: source.to_owned(),
        message: e.to_string(),
    })?;
    serde_yaml_ng::from_str(&text).map_err(|e| {
        let message = strip_location(&e.to_string());
        let origin = message.split_once(": ").and_then(|(at, problem)| {
            origins
                .iter()
                .rev()
                .find(|(key, _)| {
                    at == key
                        || at
                            .strip_prefix(key.as_str())
                            .is_some_and(|r| r.starts_with('['))
                })
                .map(|(_, name)| (name, problem))
        });
        match origin {
            Some((name, problem)) => ConfigError::Override {
                name: name.clone(),
                problem: problem.to_owned(),
            },
            None => ConfigError::Parse {
                path: source.to_owned(),
                message,
            },
        }
    })
}

/// Turns an override's text into a typed tree value; `name` is what the error names.
fn typed_value(name: &str, raw: &str, kind: Kind) -> Result<Value, ConfigError> {
    let bad = |problem: String| ConfigError::Override {
        name: name.to_owned(),
        problem,
    };
    Ok(match kind {
        Kind::Text => Value::String(raw.to_owned()),
        Kind::List => Value::Sequence(split_list(raw).into_iter().map(Value::String).collect()),
        Kind::Number => {
            let n: u64 = raw
                .trim()
                .parse()
                .map_err(|_| bad(format!("expected a whole number >= 0, got {raw:?}")))?;
            Value::Number(n.into())
        }
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(bad(format!("expected true or false, got {raw:?}"))),
        },
    })
}

/// Writes `value` at `path`, creating mappings on the way and reusing existing keys that match
/// case-insensitively (an app's key in the file may be `Game`, its variable's `game`).
/// Returns the dotted path written.
fn set_path(
    root: &mut Value,
    path: &[String],
    value: Value,
    name: &str,
) -> Result<String, ConfigError> {
    let mut node = root;
    let mut written = Vec::with_capacity(path.len());
    for (i, segment) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            return Err(ConfigError::Override {
                name: name.to_owned(),
                problem: format!("{} in the config file is not a mapping", written.join(".")),
            });
        };
        let existing = map
            .keys()
            .find(|k| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(segment)))
            .cloned();
        let key = existing.unwrap_or_else(|| Value::String(segment.clone()));
        written.push(key.as_str().unwrap_or(segment).to_owned());
        if i + 1 == path.len() {
            map.insert(key, value);
            break;
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    Ok(written.join("."))
}

/// serde_yaml_ng appends " at line L column C" of the re-serialized tree: meaningless to a user.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

//! The YAML file read into a tree guided by the schema: a key whose value is text (strings,
//! secrets, paths, durations, enums) keeps its scalar exactly as written, so an unquoted
//! `pass: 1e3` is `"1e3"` and `keyID: 1234567E89` stays itself. A tree typed by YAML's own
//! rules would make them floats (`1000.0`, `1.234567e95`), `0x1F` `31`, and fail on an integer
//! above u64 with its digits in the message: a secret echoed on stderr and to Sentry.
//!
//! Every other node is read as YAML types it (numbers, booleans, lists, sections); a number
//! too large for 64 bits is an error naming its key, never its digits.

use super::keys::{child, Keys, Kind};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::{Mapping, Value};
use std::fmt;

/// The file's tree (before `<<` merges are applied).
pub(super) fn parse(text: &str, keys: &Keys) -> Result<Value, serde_yaml_ng::Error> {
    Node::of(Some(keys.root())).deserialize(serde_yaml_ng::Deserializer::from_str(text))
}

/// How one node of the file is read, from the schema node it sits at.
#[derive(Clone, Copy)]
enum Node<'a> {
    /// A section or per-app map: its keys are looked up in this schema node.
    Section(&'a Value),
    /// A key whose value is text: the scalar as written.
    Text,
    /// A list of text items (`queue.topics`, `apns.apps`): each item as written.
    List,
    /// A number, a boolean, or nothing the schema knows (an unknown or seed key): as YAML
    /// types it.
    Typed,
}

impl<'a> Node<'a> {
    fn of(schema: Option<&'a Value>) -> Node<'a> {
        match schema {
            Some(section @ Value::Mapping(_)) => Node::Section(section),
            Some(leaf) => match Kind::of(leaf) {
                Kind::Text => Node::Text,
                Kind::List => Node::List,
                Kind::Number | Kind::Bool => Node::Typed,
            },
            None => Node::Typed,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            // `~`, `null` and nothing stay null (no value); anything else is its text.
            Node::Text => d.deserialize_option(TextVisitor),
            node => d.deserialize_any(TreeVisitor(node)),
        }
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value")
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // serde_yaml_ng hands a scalar of any style to `deserialize_str` as written.
        d.deserialize_str(self)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
}

struct TreeVisitor<'a>(Node<'a>);

impl<'de> Visitor<'de> for TreeVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    // The digits are not repeated: under an unknown key they may be a secret.
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Value, E> {
        Err(E::custom("a number out of range (quote it if it is text)"))
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Value, E> {
        Err(E::custom("a number out of range (quote it if it is text)"))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(de::Error::custom("a YAML tag (`!name`) means nothing here"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let item = match self.0 {
            Node::List => Node::Text,
            // A `<<` list of mappings merged into this section.
            node => node,
        };
        let mut items = Vec::new();
        while let Some(value) = seq.next_element_seed(item)? {
            items.push(value);
        }
        Ok(Value::Sequence(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Mapping::new();
        while let Some(key) = map.next_key_seed(Node::Typed)? {
            let node = match self.0 {
                // Merged keys belong to this section.
                Node::Section(schema) if key.as_str() == Some("<<") => Node::Section(schema),
                Node::Section(schema) => Node::of(child(schema, &key)),
                _ => Node::Typed,
            };
            let value = map.next_value_seed(node)?;
            if out.contains_key(&key) {
                let key = serde_yaml_ng::to_string(&key).unwrap_or_default();
                return Err(de::Error::custom(format!(
                    "duplicate key {}",
                    key.trim_end()
                )));
            }
            out.insert(key, value);
        }
        Ok(Value::Mapping(out))
    }
}

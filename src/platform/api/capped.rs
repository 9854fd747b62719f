//! A request's lists decoded no further than their limit (`api.maxNotifications`): a 1 MiB
//! body of empty items (`{"notifications":[{},{},...]}`, or protobuf `0a 00` repeated) is
//! ~350,000 items, ~170 MB once decoded, and was refused only after all of them were.
//!
//! JSON: a list marked `#[serde(deserialize_with = "capped")]` stops at the limit that
//! [`with_limit`] set for the decode (the decode is synchronous: a thread-local carries it).
//! Protobuf: [`count_field`] counts the repeated field's tags on the wire first, without
//! decoding them.

use serde::de::{Deserialize, Deserializer, Error as _, IgnoredAny, SeqAccess, Visitor};
use std::cell::Cell;
use std::marker::PhantomData;

thread_local! {
    static LIMIT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `decode` with every capped list limited to `max` items.
pub fn with_limit<R>(max: usize, decode: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LIMIT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LIMIT.with(|l| l.replace(Some(max))));
    decode()
}

/// A list of at most the limit [`with_limit`] set (none set: any length). The item past the
/// limit is skipped, not decoded, and refused.
pub fn capped<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let max = LIMIT.with(Cell::get).unwrap_or(usize::MAX);
    deserializer.deserialize_seq(Capped {
        max,
        item: PhantomData,
    })
}

struct Capped<T> {
    max: usize,
    item: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Capped<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a list of at most {} items", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(1024));
        while items.len() < self.max {
            match seq.next_element()? {
                Some(item) => items.push(item),
                None => return Ok(items),
            }
        }
        match seq.next_element::<IgnoredAny>()? {
            None => Ok(items),
            Some(_) => Err(A::Error::custom(format!(
                "more than {} items (api.maxNotifications)",
                self.max
            ))),
        }
    }
}

/// How many times field `tag` occurs at the top level of the protobuf message `bytes`,
/// counted no further than `max + 1`; `None` when the wire format is broken before that.
/// Nothing is decoded or allocated.
pub fn count_field(bytes: &[u8], tag: u64, max: usize) -> Option<usize> {
    let mut buf = bytes;
    let mut count = 0;
    while !buf.is_empty() && count <= max {
        let key = varint(&mut buf)?;
        if key >> 3 == tag {
            count += 1;
        }
        skip(&mut buf, key, RECURSION_LIMIT)?;
    }
    Some(count)
}

/// prost's limit on nested groups.
const RECURSION_LIMIT: u32 = 100;

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Skips the value of the field whose key is `key`.
fn skip(buf: &mut &[u8], key: u64, depth: u32) -> Option<()> {
    let take = |buf: &mut &[u8], n: usize| -> Option<()> {
        *buf = buf.get(n..)?;
        Some(())
    };
    match key & 7 {
        0 => varint(buf).map(|_| ()),
        1 => take(buf, 8),
        2 => {
            let n = usize::try_from(varint(buf)?).ok()?;
            take(buf, n)
        }
        // A group: its fields up to the end-group key of the same field number.
        3 => {
            let depth = depth.checked_sub(1)?;
            loop {
                let inner = varint(buf)?;
                if inner & 7 == 4 {
                    return (inner >> 3 == key >> 3).then_some(());
                }
                skip(buf, inner, depth)?;
            }
        }
        5 => take(buf, 4),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DECODED: AtomicUsize = AtomicUsize::new(0);

    /// An item that counts how many times it was decoded.
    struct Counted;

    impl<'de> Deserialize<'de> for Counted {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            IgnoredAny::deserialize(d)?;
            DECODED.fetch_add(1, Ordering::SeqCst);
            Ok(Counted)
        }
    }

    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "capped")]
        items: Vec<Counted>,
    }

    #[test]
    fn a_json_list_stops_decoding_past_its_limit() {
        let body = format!(r#"{{"items":[{}{{}}]}}"#, "{},".repeat(99_999));
        let e = with_limit(3, || serde_json::from_str::<Body>(&body))
            .err()
            .unwrap();
        assert!(e.to_string().contains("more than 3 items"), "{e}");
        // The three allowed ones, and not the 99,997 after them.
        assert_eq!(DECODED.load(Ordering::SeqCst), 3);

        let ok = with_limit(3, || {
            serde_json::from_str::<Body>(r#"{"items":[{},{},{}]}"#)
        });
        assert_eq!(ok.unwrap().items.len(), 3);
        // The limit is the decode's only: none set, none applies.
        let body = format!(r#"{{"items":[{}{{}}]}}"#, "{},".repeat(9));
        assert_eq!(serde_json::from_str::<Body>(&body).unwrap().items.len(), 10);
    }

    #[test]
    fn a_protobuf_field_is_counted_up_to_one_past_the_limit() {
        // Field 1, empty, 350,000 times; then garbage the count never reaches.
        let mut bytes = [0x0a, 0x00].repeat(350_000);
        bytes.extend_from_slice(&[0xff; 4]);
        assert_eq!(count_field(&bytes, 1, 100), Some(101));
        // Other fields (a varint, a fixed64, a fixed32, a group) are skipped, not counted.
        let mixed = [
            0x0a, 0x01, 0x41, // 1: "A"
            0x10, 0x96, 0x01, // 2: varint 150
            0x19, 1, 2, 3, 4, 5, 6, 7, 8, // 3: fixed64
            0x25, 1, 2, 3, 4, // 4: fixed32
            0x2b, 0x08, 0x01, 0x2c, // 5: a group holding 1: varint 1
            0x0a, 0x00, // 1: empty
        ];
        assert_eq!(count_field(&mixed, 1, 100), Some(2));
        assert_eq!(count_field(&[0x0a, 0x05, 0x00], 1, 100), None);
        assert_eq!(count_field(&[], 1, 100), Some(0));
    }
}

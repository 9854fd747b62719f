//! Event mode's messages (Pushkin's `message` and `message_localization`), stored per app in
//! PostgreSQL: what is sent when an event arrives, in which languages, how often. Also the
//! users' opt-outs (Pushkin's blacklist, event 4006) and their languages.

use super::store::StoreError;
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Pushkin's opt-out event: its pairs' values name the messages the user no longer wants.
pub const OPT_OUT_EVENT: i32 = 4006;

/// Pushkin's prebuilt events: no message may be triggered by them.
pub const RESERVED_EVENTS: std::ops::RangeInclusive<i32> = 4000..=4999;

/// A message: sent to a user when `event_id` arrives for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Unique per app: `[A-Za-z0-9_.-]`, at most 100 characters.
    #[serde(default)]
    pub name: String,
    /// Assigned when stored; what Pushkin's opt-out event names. Read but ignored in a PUT
    /// (the stored id wins), so that a GET's body can be edited and PUT back: skipped instead,
    /// `deny_unknown_fields` refused it as an unknown field.
    #[serde(default)]
    pub id: i64,
    /// The event that triggers it.
    pub event_id: i32,
    /// At most one per user per this many seconds (0: no cooldown).
    #[serde(default)]
    pub cooldown_s: i64,
    /// The deep link's screen (`base://screen` in GCM data, `screen` in the APNs payload).
    #[serde(default)]
    pub screen: String,
    /// How long the push is worth sending, seconds (0: the provider's default).
    #[serde(default)]
    pub expiry_s: i64,
    #[serde(default)]
    pub priority: Priority,
    /// Title and text per language; texts take `{name}` parameters from the event's pairs.
    pub localizations: Vec<Localization>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Localization {
    pub language_id: i32,
    #[serde(default)]
    pub title: String,
    pub text: String,
}

/// Why a message cannot be stored: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Longest title plus text of one localization: a push payload is at most 4 KiB.
pub const MAX_TEXT_BYTES: usize = 2048;

impl Message {
    /// Checks what the router relies on: a usable name, a trigger that is not one of
    /// Pushkin's reserved events, one localization per language, parameters it can fill.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !valid_name(&self.name) {
            return Err(invalid("name", "1 to 100 characters of A-Z a-z 0-9 _ . -"));
        }
        // Opt-out events name messages by name or numeric id: a name of digits would read as
        // another message's id.
        if self.name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "name",
                "not only digits (opt-out events would read it as a numeric id)",
            ));
        }
        if RESERVED_EVENTS.contains(&self.event_id) {
            return Err(invalid(
                "event_id",
                format!(
                    "{} is reserved: 4000-4999 are Pushkin's prebuilt events (4001 login, 4006 opt-out)",
                    self.event_id
                ),
            ));
        }
        // Bounded: PostgreSQL's timestamps end in 294276 AD (a larger cooldown fails every
        // claim, and with it the router's batch), and FCM refuses a TTL over 28 days.
        if !(0..=MAX_COOLDOWN_S).contains(&self.cooldown_s) {
            return Err(invalid(
                "cooldown_s",
                format!("0 to {MAX_COOLDOWN_S} (10 years)"),
            ));
        }
        if !(0..=MAX_EXPIRY_S).contains(&self.expiry_s) {
            return Err(invalid(
                "expiry_s",
                format!("0 to {MAX_EXPIRY_S} (28 days, FCM's longest TTL)"),
            ));
        }
        if self.screen.len() > super::outbound::MAX_SCREEN {
            return Err(invalid("screen", "at most 200 bytes"));
        }
        if self.localizations.is_empty() {
            return Err(invalid("localizations", "at least one"));
        }
        let mut languages = HashSet::new();
        for (i, l) in self.localizations.iter().enumerate() {
            if !languages.insert(l.language_id) {
                return Err(invalid(
                    format!("localizations[{i}].language_id"),
                    format!("{} appears twice", l.language_id),
                ));
            }
            if l.text.trim().is_empty() {
                return Err(invalid(format!("localizations[{i}].text"), "required"));
            }
            if l.title.len() + l.text.len() > MAX_TEXT_BYTES {
                return Err(invalid(
                    format!("localizations[{i}]"),
                    format!("title and text over {MAX_TEXT_BYTES} bytes"),
                ));
            }
            for (field, text) in [("title", &l.title), ("text", &l.text)] {
                if let Some(at) = stray_brace(text) {
                    return Err(invalid(
                        format!("localizations[{i}].{field}"),
                        format!(
                            "a brace at byte {at} is neither a parameter {{name}} (A-Z a-z 0-9 _) \
                             nor an escaped brace ({{{{ or }}}})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The localization for `language_id`, else for `default_language`.
    pub fn localization(&self, language_id: i32, default_language: i32) -> Option<&Localization> {
        let find = |id| self.localizations.iter().find(|l| l.language_id == id);
        find(language_id).or_else(|| find(default_language))
    }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A piece of a message's text, as Pushkin's Python `str.format` reads it.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    /// Text as sent: an escaped `{{` or `}}` is one brace.
    Text(&'a str),
    /// `{name}` (`[A-Za-z0-9_]+`): the event's pair `name`.
    Parameter(&'a str),
    /// A brace that is neither (`{ x }`, `{}`, a lone `}`), at this byte: refused at PUT (Python
    /// fails it); in a text stored before that, sent as written.
    Stray(usize),
}

/// Splits `text` into its pieces, in order; stops at the first error `each` returns.
fn pieces<'a, E>(text: &'a str, mut each: impl FnMut(Piece<'a>) -> Result<(), E>) -> Result<(), E> {
    let bytes = text.as_bytes();
    // Braces are ASCII: every index sliced at is a character boundary.
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let brace = bytes[i];
        if brace != b'{' && brace != b'}' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&brace) {
            each(Piece::Text(&text[start..=i]))?;
            i += 2;
        } else {
            each(Piece::Text(&text[start..i]))?;
            let name_len = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            if brace == b'{' && name_len > 0 && bytes.get(i + 1 + name_len) == Some(&b'}') {
                each(Piece::Parameter(&text[i + 1..i + 1 + name_len]))?;
                i += name_len + 2;
            } else {
                each(Piece::Stray(i))?;
                i += 1;
            }
        }
        start = i;
    }
    each(Piece::Text(&text[start..]))
}

/// Where `text` has a brace that is neither a parameter nor an escaped brace: the byte.
pub fn stray_brace(text: &str) -> Option<usize> {
    pieces(text, |piece| match piece {
        Piece::Stray(at) => Err(at),
        _ => Ok(()),
    })
    .err()
}

/// `text` with every `{name}` replaced by the pair `name`, and `{{`, `}}` by one brace, as
/// Pushkin's Python `str.format` fills it; the first parameter the pairs lack is the error (a
/// user never sees `{name}`). A stray brace (only in texts stored before the API refused them)
/// is sent as written.
pub fn fill(text: &str, pairs: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    pieces(text, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Parameter(name) => out.push_str(pairs.get(name).ok_or_else(|| name.to_owned())?),
            Piece::Stray(at) => out.push_str(&text[at..=at]),
        }
        Ok::<(), String>(())
    })?;
    Ok(out)
}

/// The messages, opt-outs and languages in PostgreSQL.
#[derive(Clone)]
pub struct Messages {
    pool: Pool,
}

/// The longest cooldown a message may have: 10 years.
pub const MAX_COOLDOWN_S: i64 = 10 * 365 * 24 * 3600;
/// The longest expiry: 28 days, FCM's longest `time_to_live`.
pub const MAX_EXPIRY_S: i64 = 28 * 24 * 3600;

const SELECT_MESSAGES: &str = "SELECT m.name, m.id, m.event_id, m.cooldown_s, m.screen,
        m.expiry_s, m.priority, l.language_id, l.title, l.text
    FROM pusher_messages m LEFT JOIN pusher_localizations l
      ON l.app = m.app AND l.message = m.name";

impl Messages {
    pub fn new(pool: Pool) -> Messages {
        Messages { pool }
    }

    /// Creates or replaces a message and its localizations (in one transaction).
    pub async fn put(&self, app: &str, m: &Message) -> Result<Message, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO pusher_messages
               (app, name, event_id, cooldown_s, screen, expiry_s, priority, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now())
             ON CONFLICT (app, name) DO UPDATE
               SET event_id = EXCLUDED.event_id, cooldown_s = EXCLUDED.cooldown_s,
                   screen = EXCLUDED.screen, expiry_s = EXCLUDED.expiry_s,
                   priority = EXCLUDED.priority, updated_at = now()",
            &[
                &app,
                &m.name,
                &m.event_id,
                &m.cooldown_s,
                &m.screen,
                &m.expiry_s,
                &m.priority.as_str(),
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM pusher_localizations WHERE app = $1 AND message = $2",
            &[&app, &m.name],
        )
        .await?;
        let languages: Vec<i32> = m.localizations.iter().map(|l| l.language_id).collect();
        let titles: Vec<&str> = m.localizations.iter().map(|l| l.title.as_str()).collect();
        let texts: Vec<&str> = m.localizations.iter().map(|l| l.text.as_str()).collect();
        tx.execute(
            "INSERT INTO pusher_localizations (app, message, language_id, title, text)
             SELECT $1, $2, t.language_id, t.title, t.text
             FROM unnest($3::int[], $4::text[], $5::text[]) AS t(language_id, title, text)",
            &[&app, &m.name, &languages, &titles, &texts],
        )
        .await?;
        tx.commit().await?;
        let stored = self.get(app, &m.name).await?;
        stored
            .ok_or_else(|| StoreError::Unavailable("the message vanished as it was stored".into()))
    }

    pub async fn get(&self, app: &str, name: &str) -> Result<Option<Message>, StoreError> {
        let client = self.pool.get().await?;
        let rows = super::store::query(
            &client,
            &format!("{SELECT_MESSAGES} WHERE m.app = $1 AND m.name = $2 ORDER BY l.language_id"),
            &[&app, &name],
        )
        .await?;
        Ok(collect(&rows).into_iter().next())
    }

    /// Every message of the app, by name.
    pub async fn list(&self, app: &str) -> Result<Vec<Message>, StoreError> {
        let client = self.pool.get().await?;
        let rows = super::store::query(
            &client,
            &format!("{SELECT_MESSAGES} WHERE m.app = $1 ORDER BY m.name, l.language_id"),
            &[&app],
        )
        .await?;
        Ok(collect(&rows))
    }

    /// Removes a message; false when there was none.
    pub async fn delete(&self, app: &str, name: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = super::store::execute(
            &client,
            "DELETE FROM pusher_messages WHERE app = $1 AND name = $2",
            &[&app, &name],
        )
        .await?;
        Ok(n > 0)
    }

    /// The messages each of `event_ids` triggers.
    pub async fn triggered_by(
        &self,
        app: &str,
        event_ids: &[i32],
    ) -> Result<HashMap<i32, Vec<Message>>, StoreError> {
        let client = self.pool.get().await?;
        let rows = super::store::query(
            &client,
            &format!(
                "{SELECT_MESSAGES} WHERE m.app = $1 AND m.event_id = ANY($2)
                     ORDER BY m.name, l.language_id"
            ),
            &[&app, &event_ids],
        )
        .await?;
        let mut by_event: HashMap<i32, Vec<Message>> = HashMap::new();
        for m in collect(&rows) {
            by_event.entry(m.event_id).or_default().push(m);
        }
        Ok(by_event)
    }

    /// Users' languages (from their last login).
    pub async fn languages(
        &self,
        app: &str,
        users: &[i64],
    ) -> Result<HashMap<i64, i32>, StoreError> {
        let client = self.pool.get().await?;
        let rows = super::store::query(
            &client,
            // One index lookup per user, as `Registry::devices_of` (why there).
            "SELECT l.user_id, l.language_id
             FROM (SELECT DISTINCT unnest($2::bigint[]) AS id) AS u
             CROSS JOIN LATERAL (SELECT user_id, language_id FROM pusher_logins
                                 WHERE app = (SELECT $1::text) AND user_id = u.id OFFSET 0) AS l",
            &[&app, &users],
        )
        .await?;
        // A user who never said a language has none (NULL): the default's texts.
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, Option<i32>>(1)?)))
            .collect())
    }

    /// The messages each of `users` opted out of.
    pub async fn opt_outs(
        &self,
        app: &str,
        users: &[i64],
    ) -> Result<HashMap<i64, HashSet<String>>, StoreError> {
        let client = self.pool.get().await?;
        let rows = super::store::query(
            &client,
            // One index lookup per user, as `Registry::devices_of` (why there).
            "SELECT o.user_id, o.message
             FROM (SELECT DISTINCT unnest($2::bigint[]) AS id) AS u
             CROSS JOIN LATERAL (SELECT user_id, message FROM pusher_optouts
                                 WHERE app = (SELECT $1::text) AND user_id = u.id OFFSET 0) AS o",
            &[&app, &users],
        )
        .await?;
        let mut by_user: HashMap<i64, HashSet<String>> = HashMap::new();
        for r in &rows {
            by_user.entry(r.get(0)).or_default().insert(r.get(1));
        }
        Ok(by_user)
    }

    /// Replaces each user's opt-outs with the messages named (by name or by Pushkin's numeric
    /// id), as Pushkin's 4006 does; an empty list clears them. Returns the names not known.
    pub async fn set_opt_outs(
        &self,
        app: &str,
        lists: &BTreeMap<i64, Vec<String>>,
    ) -> Result<Vec<String>, StoreError> {
        if lists.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let known = tx
            .query(
                "SELECT name, id FROM pusher_messages WHERE app = $1",
                &[&app],
            )
            .await?;
        // A value of digits is a message's numeric id (Pushkin's), whatever message is named
        // so (names of digits are refused now; older ones may exist): ids go in last.
        let mut names: HashMap<String, String> = HashMap::new();
        for r in &known {
            let name: String = r.get(0);
            names.insert(name.clone(), name);
        }
        for r in &known {
            let id: i64 = r.get(1);
            names.insert(id.to_string(), r.get(0));
        }
        let mut unknown = Vec::new();
        let (mut users, mut messages) = (Vec::new(), Vec::new());
        for (user, list) in lists {
            for named in list {
                match names.get(named.trim()) {
                    Some(name) => {
                        users.push(*user);
                        messages.push(name.clone());
                    }
                    None => unknown.push(named.clone()),
                }
            }
        }
        let all_users: Vec<i64> = lists.keys().copied().collect();
        tx.execute(
            "DELETE FROM pusher_optouts
             WHERE app = (SELECT $1::text) AND user_id = ANY((SELECT $2::bigint[])::bigint[])",
            &[&app, &all_users],
        )
        .await?;
        tx.execute(
            "INSERT INTO pusher_optouts (app, user_id, message)
             SELECT $1, t.user_id, t.message FROM unnest($2::bigint[], $3::text[])
               AS t(user_id, message)
             ON CONFLICT DO NOTHING",
            &[&app, &users, &messages],
        )
        .await?;
        tx.commit().await?;
        Ok(unknown)
    }
}

/// Rows of `SELECT_MESSAGES` (ordered by message) as messages.
fn collect(rows: &[tokio_postgres::Row]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        if out.last().is_none_or(|m| m.name != name) {
            out.push(Message {
                name,
                id: r.get(1),
                event_id: r.get(2),
                cooldown_s: r.get(3),
                screen: r.get(4),
                expiry_s: r.get(5),
                priority: if r.get::<_, String>(6) == "high" {
                    Priority::High
                } else {
                    Priority::Normal
                },
                localizations: Vec::new(),
            });
        }
        if let (Some(language_id), Some(m)) = (r.get::<_, Option<i32>>(7), out.last_mut()) {
            m.localizations.push(Localization {
                language_id,
                title: r.get::<_, Option<String>>(8).unwrap_or_default(),
                text: r.get::<_, Option<String>>(9).unwrap_or_default(),
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parameters_are_filled_or_name_what_is_missing() {
        let p = pairs(&[("name", "Helena"), ("n", "3")]);
        assert_eq!(
            fill("{name} sent you {n} gifts", &p).unwrap(),
            "Helena sent you 3 gifts"
        );
        assert_eq!(fill("{name} and {friend}", &p).unwrap_err(), "friend");
        // Python's escapes, as Pushkin's `str.format`: a doubled brace is one, never a
        // parameter.
        assert_eq!(fill("Use code {{VIP}}", &p).unwrap(), "Use code {VIP}");
        assert_eq!(fill("{{{name}}}", &p).unwrap(), "{Helena}");
        assert_eq!(fill("{{}} {n}}}", &p).unwrap(), "{} 3}");
        // Stray braces (refused at PUT; a text stored before is sent as written).
        assert_eq!(fill("{ x } {} {a-b} {", &p).unwrap(), "{ x } {} {a-b} {");
        assert_eq!(fill("{name}}", &p).unwrap(), "Helena}");
        assert_eq!(fill("héllo {name}ü", &p).unwrap(), "héllo Helenaü");
    }

    /// What Python's `str.format` would fail is refused where it is written, naming the byte.
    #[test]
    fn stray_braces_are_found() {
        for ok in ["plain", "{name} {{x}} }} {{", "{a_1}{b}", "é{n}é"] {
            assert_eq!(stray_brace(ok), None, "{ok}");
        }
        for (text, at) in [
            ("{ x }", 0),
            ("a {}", 2),
            ("{friend.name}", 0),
            ("{first name}", 0),
            ("ok {n}}", 6),
            ("é}", 2),
            ("{", 0),
        ] {
            assert_eq!(stray_brace(text), Some(at), "{text}");
        }
    }

    fn message() -> Message {
        Message {
            name: "gift".into(),
            id: 0,
            event_id: 17,
            cooldown_s: 60,
            screen: "gifts".into(),
            expiry_s: 0,
            priority: Priority::Normal,
            localizations: vec![
                Localization {
                    language_id: 1,
                    title: "Gift".into(),
                    text: "{name} sent a gift".into(),
                },
                Localization {
                    language_id: 3,
                    title: "Regalo".into(),
                    text: "{name} te envió un regalo".into(),
                },
            ],
        }
    }

    /// The schema's CHECK holds rows written by hand to the bounds the API checks.
    #[test]
    fn the_schema_bounds_are_the_apis() {
        let schema = super::super::store::SCHEMA;
        assert!(schema.contains(&format!("cooldown_s <= {MAX_COOLDOWN_S}")));
        assert!(schema.contains(&format!("expiry_s <= {MAX_EXPIRY_S}")));
    }

    #[test]
    fn localization_falls_back_to_the_default_language() {
        let m = message();
        assert_eq!(m.localization(3, 1).unwrap().title, "Regalo");
        assert_eq!(m.localization(9, 1).unwrap().title, "Gift");
        assert!(m.localization(9, 4).is_none());
    }

    #[test]
    fn validation_names_the_field() {
        assert!(message().validate().is_ok());
        let mut m = message();
        m.name = "a b".into();
        assert_eq!(m.validate().unwrap_err().field, "name");
        let mut m = message();
        m.event_id = 4001;
        assert_eq!(m.validate().unwrap_err().field, "event_id");
        let mut m = message();
        m.localizations[1].language_id = 1;
        assert_eq!(
            m.validate().unwrap_err().field,
            "localizations[1].language_id"
        );
        let mut m = message();
        m.localizations[0].text = " ".into();
        assert_eq!(m.validate().unwrap_err().field, "localizations[0].text");
        let mut m = message();
        m.localizations[1].title = "Hola {friend.name}".into();
        let e = m.validate().unwrap_err();
        assert_eq!(e.field, "localizations[1].title");
        assert!(e.message.contains("byte 5"), "{e}");
        m.localizations[1].title = "Hola {{amigo}}".into();
        assert!(m.validate().is_ok());
        // Past PostgreSQL's timestamps (every claim, and the router's batch, would fail) or
        // FCM's longest TTL.
        let mut m = message();
        m.cooldown_s = 10_000_000_000_000;
        assert_eq!(m.validate().unwrap_err().field, "cooldown_s");
        m.cooldown_s = MAX_COOLDOWN_S;
        assert!(m.validate().is_ok());
        m.expiry_s = MAX_EXPIRY_S + 1;
        assert_eq!(m.validate().unwrap_err().field, "expiry_s");
    }
}

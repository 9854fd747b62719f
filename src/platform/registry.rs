//! The device registry in PostgreSQL (`pusher_devices`, `pusher_logins`), with Pushkin's rules:
//! one user per device token (the newest registration wins, whatever order registrations
//! arrive in), one token per (user, device id), at most [`MAX_DEVICES_PER_USER`] devices per
//! user (the oldest dropped), and a token its service called invalid stays out unless it was
//! registered after that verdict. Every call takes a batch and runs a fixed number of statements.

use super::store::StoreError;
use crate::push::Platform;
use deadpool_postgres::Pool;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Pushkin's limit.
pub const MAX_DEVICES_PER_USER: i64 = 10;

/// Longest token (or web push endpoint) accepted: an APNs token is 64 hex characters, an
/// FCM one about 160, an endpoint a few hundred. Tokens are keys of PostgreSQL indexes, whose
/// entries stop at ~2.7 KB with the app and notif_id beside them.
pub const MAX_TOKEN_LEN: usize = 2000;

/// Why `token` cannot be a device's token on `platform`, if it cannot: the check of the API's
/// tokens (gorush's pushes, registrations; login events check theirs in [`login_of`], the
/// topic rule included). An Android token never
/// starts with `/topics/`: the pusher sends such a `to` to the FCM topic (the legacy API's
/// broadcast, which raw Kafka messages may ask for), so one taken as a device's token made a
/// push to one device a push to every subscriber of the topic.
pub fn token_problem(platform: Platform, token: &str) -> Option<String> {
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "not a device token (1 to {MAX_TOKEN_LEN} characters, no spaces)"
        ));
    }
    if platform == Platform::Gcm && crate::push::gcm::is_topic_address(token) {
        return Some(
            "an FCM topic (/topics/...), not a device token: FCM topics are not supported here"
                .into(),
        );
    }
    None
}

/// Pushkin's login event.
pub const LOGIN_EVENT: i32 = 4001;

/// The pair of a login event that is missing or unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unusable {
    pub pair: &'static str,
    pub why: &'static str,
}

/// A login event's device and language (Pushkin's pairs) at `at_ms`. The API refuses an event
/// this refuses; the router counts one written past the API as malformed.
pub fn login_of(
    user_id: i64,
    at_ms: i64,
    pairs: &BTreeMap<String, String>,
) -> Result<(Device, Login), Unusable> {
    // Stored as text: a value PostgreSQL would refuse (a NUL) is no value, so that a record
    // written past the API cannot stop the partition.
    let get = |k: &str| {
        pairs
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty() && v.len() <= MAX_TOKEN_LEN)
            .filter(|v| !v.chars().any(char::is_control))
    };
    let token = get("deviceToken").ok_or(Unusable {
        pair: "deviceToken",
        why: "required: a device token of 1 to 2000 characters, no control characters",
    })?;
    let platform_id = get("platformId").and_then(|p| p.parse::<i64>().ok());
    let platform = platform_id
        .and_then(platform_of_pushkin_id)
        .ok_or(Unusable {
            pair: "platformId",
            why: if pairs.contains_key("platformId") {
                "not a platform: 1 (Android phone), 2 (iPhone), 5 (iPad) or 6 (Android tablet)"
            } else {
                "required: 1 (Android phone), 2 (iPhone), 5 (iPad) or 6 (Android tablet)"
            },
        })?;
    if platform == Platform::Gcm && crate::push::gcm::is_topic_address(token) {
        return Err(Unusable {
            pair: "deviceToken",
            why: "an FCM topic (/topics/...), not a device token",
        });
    }
    // None when it says none (or no number: the API refuses that, records from before it
    // keep their device): the user keeps the language they had, and one who never said gets
    // `route.defaultLanguage`'s texts.
    let language_id = get("languageId").and_then(|l| l.parse().ok());
    Ok((
        Device {
            user_id,
            platform,
            token: token.to_owned(),
            device_id: get("deviceId").unwrap_or_default().to_owned(),
            platform_id: platform_id.and_then(|id| i32::try_from(id).ok()),
            app_version: get("applicationVersion").unwrap_or_default().to_owned(),
            registered_ms: at_ms,
            keys: None,
        },
        Login {
            user_id,
            language_id,
            at_ms,
        },
    ))
}

/// One device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub user_id: i64,
    pub platform: Platform,
    pub token: String,
    pub device_id: String,
    /// Pushkin's platform id (1 Android phone, 2 iPhone, 5 iPad, 6 Android tablet), if known.
    pub platform_id: Option<i32>,
    pub app_version: String,
    /// When it was registered (the login's time), Unix milliseconds.
    pub registered_ms: i64,
    /// Web push: the subscription's keys (its endpoint is the token). Not shown by the API:
    /// `auth` is the browser's secret.
    #[serde(skip)]
    pub keys: Option<crate::push::webpush::Keys>,
}

impl Device {
    /// The web push subscription this device is, if it is one.
    pub fn subscription(&self) -> Option<crate::push::webpush::Subscription> {
        Some(crate::push::webpush::Subscription {
            endpoint: self.token.clone(),
            keys: self.keys.clone()?,
        })
    }
}

/// A user's login: its time, and the user's language when it says one (a login without one
/// keeps the language the user had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Login {
    pub user_id: i64,
    pub language_id: Option<i32>,
    pub at_ms: i64,
}

/// Pushkin's platform ids: which push platform each is.
pub fn platform_of_pushkin_id(id: i64) -> Option<Platform> {
    match id {
        1 | 6 => Some(Platform::Gcm),
        2 | 5 => Some(Platform::Apns),
        _ => None,
    }
}

/// A device from a row of the device queries (user, platform, token, device id, platform id,
/// app version, registered ms, p256dh, auth); `None` for a platform this build does not know.
fn device(r: &tokio_postgres::Row) -> Option<Device> {
    Some(Device {
        user_id: r.get(0),
        platform: r.get::<_, String>(1).parse().ok()?,
        token: r.get(2),
        device_id: r.get(3),
        platform_id: r.get(4),
        app_version: r.get(5),
        registered_ms: r.get(6),
        keys: keys(r.get(7), r.get(8)),
    })
}

/// A web push device's keys from their columns.
fn keys(p256dh: Option<String>, auth: Option<String>) -> Option<crate::push::webpush::Keys> {
    Some(crate::push::webpush::Keys {
        p256dh: p256dh?,
        auth: auth?,
    })
}

#[derive(Clone)]
pub struct Registry {
    pool: Pool,
}

impl Registry {
    pub fn new(pool: Pool) -> Registry {
        Registry { pool }
    }

    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Registers `devices` and records `logins`, in one transaction.
    pub async fn register(
        &self,
        app: &str,
        devices: &[Device],
        logins: &[Login],
    ) -> Result<(), StoreError> {
        if devices.is_empty() && logins.is_empty() {
            return Ok(());
        }
        // One row per token (the newest) and per user (the newest login): a statement may not
        // touch a row twice. Inserted in token order (the statement's ORDER BY), as
        // `forget_invalid_tokens` locks them: opposite orders deadlocked.
        let mut newest: BTreeMap<&str, (usize, &Device)> = BTreeMap::new();
        for (i, d) in devices.iter().enumerate() {
            let slot = newest.entry(d.token.as_str()).or_insert((i, d));
            if d.registered_ms >= slot.1.registered_ms {
                *slot = (i, d);
            }
        }
        // And one token per device (user, device id): two logins of one device with different
        // tokens at the same time (Pushkin's seconds) would each delete the other below. The
        // newest stays, the later in the batch on a tie, as one after the other would leave.
        let mut per_device: HashMap<(i64, &str), (i64, usize)> = HashMap::new();
        for &(i, d) in newest.values().filter(|(_, d)| !d.device_id.is_empty()) {
            let slot = per_device
                .entry((d.user_id, d.device_id.as_str()))
                .or_insert((d.registered_ms, i));
            *slot = (*slot).max((d.registered_ms, i));
        }
        let devices: Vec<&Device> = newest
            .into_values()
            .filter(|&(i, d)| {
                d.device_id.is_empty() || per_device[&(d.user_id, d.device_id.as_str())].1 == i
            })
            .map(|(_, d)| d)
            .collect();
        let mut last_login: HashMap<i64, Login> = HashMap::new();
        for l in logins {
            let slot = last_login.entry(l.user_id).or_insert(*l);
            if l.at_ms >= slot.at_ms {
                let language = l.language_id.or(slot.language_id);
                *slot = *l;
                slot.language_id = language;
            } else if slot.language_id.is_none() {
                slot.language_id = l.language_id;
            }
        }
        let tokens: Vec<&str> = devices.iter().map(|d| d.token.as_str()).collect();
        let platforms: Vec<&str> = devices.iter().map(|d| d.platform.as_str()).collect();
        let users: Vec<i64> = devices.iter().map(|d| d.user_id).collect();
        let device_ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
        let platform_ids: Vec<Option<i32>> = devices.iter().map(|d| d.platform_id).collect();
        let versions: Vec<&str> = devices.iter().map(|d| d.app_version.as_str()).collect();
        let p256dh: Vec<Option<&str>> = devices
            .iter()
            .map(|d| d.keys.as_ref().map(|k| k.p256dh.as_str()))
            .collect();
        let auth: Vec<Option<&str>> = devices
            .iter()
            .map(|d| d.keys.as_ref().map(|k| k.auth.as_str()))
            .collect();
        let at: Vec<f64> = devices
            .iter()
            .map(|d| d.registered_ms as f64 / 1000.0)
            .collect();

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The logins first, in user order: the upsert locks each user's row until the commit,
        // so two registrations of one user take turns, and the second's trim below sees the
        // first's device. Seen: 30 concurrent registrations of one user left 16 devices
        // (each trim saw only its own insert). Devices and logins of a user come together
        // (a login event; `PUT /api/v1/devices` records one too).
        if !last_login.is_empty() {
            let mut users: Vec<i64> = last_login.keys().copied().collect();
            users.sort_unstable();
            let languages: Vec<Option<i32>> =
                users.iter().map(|u| last_login[u].language_id).collect();
            let at: Vec<f64> = users
                .iter()
                .map(|u| last_login[u].at_ms as f64 / 1000.0)
                .collect();
            tx.execute(
                "INSERT INTO pusher_logins AS l (app, user_id, language_id, last_login)
                 SELECT $1, t.user_id, t.language_id, to_timestamp(t.at)
                 FROM unnest($2::bigint[], $3::int[], $4::float8[]) AS t(user_id, language_id, at)
                 ORDER BY t.user_id
                 ON CONFLICT (app, user_id) DO UPDATE
                   SET language_id = CASE WHEN l.last_login <= EXCLUDED.last_login
                                          THEN COALESCE(EXCLUDED.language_id, l.language_id)
                                          ELSE COALESCE(l.language_id, EXCLUDED.language_id) END,
                       last_login = GREATEST(l.last_login, EXCLUDED.last_login)
                   -- An older login changes something only when it says a language the
                   -- user has none of (it arrived after a newer one that said none).
                   WHERE l.last_login <= EXCLUDED.last_login
                      OR (l.language_id IS NULL AND EXCLUDED.language_id IS NOT NULL)",
                &[&app, &users, &languages, &at],
            )
            .await?;
        }
        if !devices.is_empty() {
            tx.execute(
                "INSERT INTO pusher_devices AS d
                   (app, token, platform, user_id, device_id, platform_id, app_version, updated_at,
                    p256dh, auth)
                 SELECT $1, t.token, t.platform, t.user_id, t.device_id, t.platform_id,
                        t.app_version, to_timestamp(t.at), t.p256dh, t.auth
                 FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[],
                             $7::text[], $8::float8[], $9::text[], $10::text[])
                   AS t(token, platform, user_id, device_id, platform_id, app_version, at,
                        p256dh, auth)
                 WHERE (t.device_id = '' OR NOT EXISTS (
                     SELECT 1 FROM pusher_devices AS n
                     WHERE n.app = $1 AND n.user_id = t.user_id AND n.device_id = t.device_id
                       AND n.token <> t.token AND n.updated_at > to_timestamp(t.at)))
                   AND NOT EXISTS (
                     SELECT 1 FROM pusher_dead_tokens AS x
                     WHERE x.app = $1 AND x.token = t.token AND x.dead_at > to_timestamp(t.at)
                     OFFSET 0)
                 -- The database's order, as `forget_invalid_tokens` locks them (the map's
                 -- byte order differs from a locale's).
                 ORDER BY t.token
                 ON CONFLICT (app, token) DO UPDATE
                   SET platform = EXCLUDED.platform, user_id = EXCLUDED.user_id,
                       device_id = EXCLUDED.device_id, platform_id = EXCLUDED.platform_id,
                       app_version = EXCLUDED.app_version, updated_at = EXCLUDED.updated_at,
                       p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth
                   WHERE d.updated_at <= EXCLUDED.updated_at",
                &[
                    &app,
                    &tokens,
                    &platforms,
                    &users,
                    &device_ids,
                    &platform_ids,
                    &versions,
                    &at,
                    &p256dh,
                    &auth,
                ],
            )
            .await?;
            // Both deletions are fenced (`store.rs` says why). Before, for an app the statistics
            // did not know yet (a new one, as each bench run's), the second ran a window over
            // the batch's users once per device of the batch, and the first read every device
            // of the app: 5,000 users into a 10,000-device app took 25 s (2026-12-06).
            //
            // A device that got a new token drops its old one (registered before the new);
            // the INSERT above already skipped an old token whose login arrived late, and a
            // token refused since that registration (`pusher_dead_tokens`: looked up by its
            // key one token at a time, `OFFSET 0` keeping it from becoming a join that could
            // read every tombstone).
            tx.execute(
                "DELETE FROM pusher_devices AS d
                 USING unnest($2::bigint[], $3::text[], $4::text[], $5::float8[])
                   AS t(user_id, device_id, token, at)
                 WHERE d.app = (SELECT $1::text)
                   AND d.user_id = ANY((SELECT $2::bigint[])::bigint[]) AND d.user_id = t.user_id
                   AND t.device_id <> '' AND d.device_id = t.device_id AND d.token <> t.token
                   AND d.updated_at <= to_timestamp(t.at)",
                &[&app, &users, &device_ids, &tokens, &at],
            )
            .await?;
            // At most MAX_DEVICES_PER_USER per user: the most recently registered stay. The
            // tokens past the limit are found one user at a time (`OFFSET` keeps the lookup
            // from being flattened into a join), once (`MATERIALIZED`). A row is deleted only
            // as it was found: one that another transaction moved to another user meanwhile is
            // checked again against the join on its new version and kept (matching on the token
            // alone, that user lost their newest device).
            tx.execute(
                "WITH old AS MATERIALIZED (
                     SELECT o.token, u.id AS user_id, o.updated_at
                     FROM (SELECT DISTINCT unnest($2::bigint[]) AS id) AS u
                     CROSS JOIN LATERAL (SELECT token, updated_at FROM pusher_devices
                                         WHERE app = (SELECT $1::text) AND user_id = u.id
                                         ORDER BY updated_at DESC, token OFFSET $3) AS o)
                 DELETE FROM pusher_devices AS d USING old
                 WHERE d.app = (SELECT $1::text) AND d.token = old.token
                   AND d.user_id = old.user_id AND d.updated_at = old.updated_at",
                &[&app, &users, &MAX_DEVICES_PER_USER],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The devices of `users`, newest first per user.
    ///
    /// One index lookup per user, whatever the statistics say of the app: with `WHERE app = $1
    /// AND user_id = ANY($2)`, an app the statistics do not know yet (new, or grown since the
    /// last ANALYZE) got a plan that reads every row of the app and filters: 87 ms instead of
    /// 2 ms for 500 users of a 200,000-device app (the router fell from 35,000 to 5,000
    /// users/s). `OFFSET 0` keeps the subquery from being flattened into a join the planner
    /// could choose as badly, and the app is fenced (`store.rs` says how). The registry's
    /// other reads by user are written the same way.
    pub async fn devices_of(&self, app: &str, users: &[i64]) -> Result<Vec<Device>, StoreError> {
        let client = self.pool.get().await?;
        let rows = super::store::query(
            &client,
            "SELECT d.user_id, d.platform, d.token, d.device_id, d.platform_id, d.app_version,
                    (extract(epoch FROM d.updated_at) * 1000)::bigint, d.p256dh, d.auth
             FROM (SELECT DISTINCT unnest($2::bigint[]) AS id) AS u
             CROSS JOIN LATERAL (SELECT * FROM pusher_devices
                                 WHERE app = (SELECT $1::text) AND user_id = u.id OFFSET 0) AS d
             ORDER BY d.user_id, d.updated_at DESC, d.token",
            &[&app, &users],
        )
        .await?;
        Ok(rows.iter().filter_map(device).collect())
    }

    /// One page of the devices meeting `condition`, in token order after `after`. A user who
    /// never said a language has `default_language` (event mode sends them its texts too).
    pub async fn segment_page(
        &self,
        app: &str,
        condition: &crate::platform::requests::Condition,
        default_language: i32,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Device>, StoreError> {
        let client = self.pool.get().await?;
        let platform = condition.platform.map(|p| p.as_str());
        let after_login = condition.last_login_after.map(|t| t as f64);
        let before_login = condition.last_login_before.map(|t| t as f64);
        let rows = super::store::query(
            &client,
            "SELECT d.user_id, d.platform, d.token, d.device_id, d.platform_id, d.app_version,
                        (extract(epoch FROM d.updated_at) * 1000)::bigint, d.p256dh, d.auth
                 FROM pusher_devices d
                 LEFT JOIN LATERAL (SELECT language_id, last_login FROM pusher_logins
                                    WHERE app = d.app AND user_id = d.user_id OFFSET 0) l ON true
                 WHERE d.app = (SELECT $1::text) AND d.token > $2
                   AND ($3::text IS NULL OR d.platform = $3)
                   AND ($4::int IS NULL OR COALESCE(l.language_id, $9) = $4)
                   AND ($5::text IS NULL OR d.app_version = $5)
                   AND ($6::float8 IS NULL OR l.last_login >= to_timestamp($6))
                   AND ($7::float8 IS NULL OR l.last_login < to_timestamp($7))
                 ORDER BY d.token LIMIT $8",
            &[
                &app,
                &after,
                &platform,
                &condition.language_id,
                &condition.app_version,
                &after_login,
                &before_login,
                &limit,
                &default_language,
            ],
        )
        .await?;
        Ok(rows.iter().filter_map(device).collect())
    }

    /// A segment's progress: (last token sent, devices sent, done).
    pub async fn segment_progress(
        &self,
        app: &str,
        notif_id: &str,
    ) -> Result<Option<(String, i64, bool)>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT last_token, produced, done FROM pusher_segments
                 WHERE app = $1 AND notif_id = $2",
                &[&app, &notif_id],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Records that a segment's devices up to `last_token` are in Kafka.
    pub async fn save_segment_progress(
        &self,
        app: &str,
        notif_id: &str,
        last_token: &str,
        produced: i64,
        done: bool,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        super::store::execute(
            &client,
            "INSERT INTO pusher_segments (app, notif_id, last_token, produced, done)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (app, notif_id) DO UPDATE
                   SET last_token = EXCLUDED.last_token, produced = EXCLUDED.produced,
                       done = EXCLUDED.done, updated_at = now()",
            &[&app, &notif_id, &last_token, &produced, &done],
        )
        .await?;
        Ok(())
    }

    /// Removes one token (at `at_ms`, Unix ms); false when the app has no such token. A
    /// tombstone keeps a login older than the removal, routed after it (a router behind, a
    /// batch redone), from bringing the token back to a device that logged out; a
    /// registration after it is taken, and one in the same second (Pushkin's logins are timed
    /// in seconds: a re-login right after a logout, an account switch, must win that tie).
    /// Tombstone first, as `forget_invalid_tokens` locks them.
    pub async fn remove(&self, app: &str, token: &str, at_ms: i64) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = super::store::execute(
            &client,
            "WITH dead AS (
                 INSERT INTO pusher_dead_tokens AS x (app, token, dead_at)
                 VALUES ($1, $2, to_timestamp(floor($3)))
                 ON CONFLICT (app, token) DO UPDATE SET dead_at = EXCLUDED.dead_at
                   WHERE x.dead_at < EXCLUDED.dead_at)
             DELETE FROM pusher_devices WHERE app = (SELECT $1::text) AND token = $2",
            &[&app, &token, &(at_ms as f64 / 1000.0)],
        )
        .await?;
        Ok(n > 0)
    }

    /// A user's language from their logins (None: never logged in, or never said one).
    pub async fn language_of(&self, app: &str, user: i64) -> Result<Option<i32>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT language_id FROM pusher_logins WHERE app = $1 AND user_id = $2",
                &[&app, &user],
            )
            .await?;
        Ok(row.and_then(|r| r.get(0)))
    }
}

//! Event mode's claims in PostgreSQL: cooldown per (user, message), duplicate suppression per
//! (device, message), and the per-device limit (GCRA). Each is one batched
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING` (reference/platform-anchors.md
//! §5): the row lock makes it atomic under concurrent routers, and the rows it returns are the
//! claims won. Every claim names its owner (`last_event`; the limit keeps its latest owners,
//! `charged`). Cooldown and dedup claims are marked `sent` once their pushes are in Kafka
//! (`mark_sent`; a limit's charges too, in its `sent` owners): a redelivered event (after a
//! crash or a rebalance) finds its own claim, sends if it was not sent yet and skips if it was,
//! without taking another unit. Only what was not sent is ever given back. A claim won again
//! before it was sent has its window start again (a retry after a Kafka outage sends later than
//! the first claim, and its cooldown runs from then).
//!
//! A statement may not touch a row twice, so keys repeated in one call are split into rounds.
//! Every statement locks its rows in key order (the claims' `ORDER BY`, the others' `locked`
//! CTE, whatever plan PostgreSQL picks for the join): two routers working on the same users
//! (the old and new owner of a partition during a rebalance) wait for each other instead of
//! deadlocking.

use super::store::StoreError;
use deadpool_postgres::Pool;
use std::collections::HashMap;

/// What a cooldown or dedup claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// This owner may send (a new claim, or its own not yet sent).
    Won,
    /// Another owner holds it (inside the cooldown or window).
    Lost,
    /// This owner's pushes were already sent (a redelivery): skip.
    Sent,
}

/// One claim: its key and its owner (the notification it is for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The user id (cooldown) or the device token (dedup, limit).
    pub subject: String,
    /// The message's name (cooldown, dedup); empty for the per-device limit.
    pub message: String,
    pub owner: String,
}

/// The per-device limit: `count` pushes per `window` (GCRA: one every window / count, a burst
/// of `count`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub count: u32,
    pub window_s: f64,
}

impl Limit {
    /// The GCRA's interval, the time one push costs: `window / count`, in seconds.
    fn interval_s(&self) -> f64 {
        bounded(self.window_s) / f64::from(self.count.max(1))
    }
}

/// Most owners a device's limit remembers (see [`Claims::limit`]).
pub const CHARGED_KEPT: u32 = 64;

/// A cooldown or window in seconds as a claim takes it: at most 10 years (a message's longest
/// cooldown; the config's longest window). One past PostgreSQL's timestamps (a message stored
/// by hand, or before the API bounded cooldowns) failed every claim statement holding it, and
/// with it the router's batch of every app fetched beside it, for good.
fn bounded(seconds: f64) -> f64 {
    const MAX: f64 = super::messages::MAX_COOLDOWN_S as f64;
    if seconds > 0.0 {
        seconds.min(MAX)
    } else {
        0.0
    }
}

#[derive(Clone)]
pub struct Claims {
    pool: Pool,
}

impl Claims {
    pub fn new(pool: Pool) -> Claims {
        Claims { pool }
    }

    /// Cooldown claims, `(claim, cooldown seconds)`; subjects are user ids. Returns, per
    /// claim, whether it may send. The cooldown runs from the claim's time (`claimed_at`)
    /// and is the message's as the claim gives it now (`EXCLUDED.until - now()`): a message
    /// whose cooldown was changed applies the new one to users inside the old one, as
    /// Pushkin compares the last send with the current cooldown. Seen: the end stored at
    /// the claim held, so a cooldown raised from 5 s to a day let a push through 7 s later.
    /// Rows claimed by a build before `claimed_at` keep their stored end. (In seconds: an
    /// interval of days would follow the session's time zone across a DST change.)
    pub async fn cooldown(
        &self,
        app: &str,
        claims: &[(Claim, i64)],
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut won = vec![Claimed::Lost; claims.len()];
        for round in rounds(claims.iter().map(|(c, _)| c)) {
            let users: Vec<i64> = round
                .iter()
                .map(|&i| claims[i].0.subject.parse().unwrap_or_default())
                .collect();
            let messages: Vec<&str> = round
                .iter()
                .map(|&i| claims[i].0.message.as_str())
                .collect();
            let owners: Vec<&str> = round.iter().map(|&i| claims[i].0.owner.as_str()).collect();
            let seconds: Vec<f64> = round.iter().map(|&i| bounded(claims[i].1 as f64)).collect();
            let client = self.pool.get().await?;
            let rows = super::store::query(
                &client,
                "INSERT INTO pusher_cooldowns AS c
                       (app, user_id, message, until, last_event, claimed_at)
                     SELECT $1, t.user_id, t.message, now() + t.secs * interval '1 second', t.owner,
                            now()
                     FROM unnest($2::bigint[], $3::text[], $4::text[], $5::float8[])
                       AS t(user_id, message, owner, secs)
                     ORDER BY t.user_id, t.message
                     ON CONFLICT (app, user_id, message) DO UPDATE
                       SET until = CASE WHEN c.last_event <> EXCLUDED.last_event THEN EXCLUDED.until
                                        WHEN c.sent THEN c.until
                                        ELSE greatest(c.until, EXCLUDED.until) END,
                           claimed_at = CASE WHEN c.sent AND c.last_event = EXCLUDED.last_event
                                             THEN c.claimed_at ELSE now() END,
                           sent = c.sent AND c.last_event = EXCLUDED.last_event,
                           last_event = EXCLUDED.last_event
                       WHERE coalesce(c.claimed_at
                                      + extract(epoch FROM EXCLUDED.until - now())
                                        * interval '1 second',
                                      c.until) <= now()
                          OR c.last_event = EXCLUDED.last_event
                     RETURNING user_id::text, message, sent",
                &[&app, &users, &messages, &owners, &seconds],
            )
            .await?;
            mark(&mut won, &round, claims.iter().map(|(c, _)| c), &rows);
        }
        Ok(won)
    }

    /// Duplicate-suppression claims (subjects are tokens): the same message to the same device
    /// at most once per `window_s`.
    pub async fn dedup(
        &self,
        app: &str,
        claims: &[Claim],
        window_s: f64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut won = vec![Claimed::Lost; claims.len()];
        let window_s = bounded(window_s);
        for round in rounds(claims.iter()) {
            let col =
                |f: fn(&Claim) -> &str| round.iter().map(|&i| f(&claims[i])).collect::<Vec<&str>>();
            let client = self.pool.get().await?;
            let rows = super::store::query(
                &client,
                "INSERT INTO pusher_dedup AS d (app, token, message, until, last_event)
                     SELECT $1, t.token, t.message, now() + $5 * interval '1 second', t.owner
                     FROM unnest($2::text[], $3::text[], $4::text[]) AS t(token, message, owner)
                     ORDER BY t.token, t.message
                     ON CONFLICT (app, token, message) DO UPDATE
                       SET until = CASE WHEN d.last_event <> EXCLUDED.last_event THEN EXCLUDED.until
                                        WHEN d.sent THEN d.until
                                        ELSE greatest(d.until, EXCLUDED.until) END,
                           sent = d.sent AND d.last_event = EXCLUDED.last_event,
                           last_event = EXCLUDED.last_event
                       WHERE d.until <= now() OR d.last_event = EXCLUDED.last_event
                     RETURNING token, message, sent",
                &[
                    &app,
                    &col(|c| &c.subject),
                    &col(|c| &c.message),
                    &col(|c| &c.owner),
                    &window_s,
                ],
            )
            .await?;
            mark(&mut won, &round, claims.iter(), &rows);
        }
        Ok(won)
    }

    /// Per-device limit claims (subjects are tokens, `message` ignored): GCRA, one statement
    /// per round. A device remembers the owners of its latest charges (up to
    /// [`CHARGED_KEPT`]), so a claim whose owner was charged already wins without a charge:
    /// a redelivered batch costs nothing, even where two of its pushes go to one device (one
    /// remembered owner was charged again for each of them).
    pub async fn limit(
        &self,
        app: &str,
        claims: &[Claim],
        limit: Limit,
    ) -> Result<Vec<bool>, StoreError> {
        let mut won = vec![Claimed::Lost; claims.len()];
        let keyed = per_device(claims);
        let window_s = bounded(limit.window_s);
        let interval = limit.interval_s();
        // `count` later charges push an owner out: its redelivery, if one still comes, is
        // then charged again (as every redelivery was with one owner kept). `sent` keeps only
        // owners still charged: one pushed out and charged again is not sent until marked.
        let kept = limit.count.clamp(1, CHARGED_KEPT) as i32;
        for round in rounds(keyed.iter()) {
            let tokens: Vec<&str> = round.iter().map(|&i| keyed[i].subject.as_str()).collect();
            let owners: Vec<&str> = round.iter().map(|&i| keyed[i].owner.as_str()).collect();
            let client = self.pool.get().await?;
            let rows = super::store::query(
                &client,
                "INSERT INTO pusher_device_limits AS r (app, token, tat, charged)
                     SELECT $1, t.token, now() + $4 * interval '1 second', ARRAY[t.owner]
                     FROM unnest($2::text[], $3::text[]) AS t(token, owner)
                     ORDER BY t.token
                     ON CONFLICT (app, token) DO UPDATE
                       SET tat = CASE WHEN EXCLUDED.charged[1] = ANY(r.charged) THEN r.tat
                                 ELSE greatest(r.tat, now()) + $4 * interval '1 second' END,
                           charged = CASE WHEN EXCLUDED.charged[1] = ANY(r.charged) THEN r.charged
                                     ELSE (EXCLUDED.charged || r.charged)[1:$6] END,
                           sent = CASE WHEN EXCLUDED.charged[1] = ANY(r.charged) THEN r.sent
                                  ELSE ARRAY(SELECT o FROM unnest(r.sent) AS o
                                             WHERE o = ANY((EXCLUDED.charged || r.charged)[1:$6]))
                                  END
                       WHERE EXCLUDED.charged[1] = ANY(r.charged)
                          OR greatest(r.tat, now()) + $4 * interval '1 second'
                             <= now() + $5 * interval '1 second'
                     RETURNING token, ''::text, false",
                &[&app, &tokens, &owners, &interval, &window_s, &kept],
            )
            .await?;
            mark(&mut won, &round, keyed.iter(), &rows);
        }
        Ok(won.into_iter().map(|c| c == Claimed::Won).collect())
    }

    /// Gives back the per-device limit's charges of pushes not sent (an earlier attempt of the
    /// batch charged them, and its retry does not send them): only where the owner is still
    /// one the device remembers and not one marked sent (`mark_sent`: the attempt that charged
    /// it got its push into Kafka, then died before the commit), once (the owner is
    /// forgotten). The device's `tat` goes back
    /// by one interval, but never below what the later charges need: each of the `k` newer
    /// owners was charged at or before now, so at most `now + k * interval` (exact for the
    /// newest; for an older one it may give back less).
    pub async fn give_back_charges(
        &self,
        app: &str,
        claims: &[Claim],
        limit: Limit,
    ) -> Result<(), StoreError> {
        if claims.is_empty() {
            return Ok(());
        }
        let keyed = per_device(claims);
        let interval = limit.interval_s();
        let client = self.pool.get().await?;
        for round in rounds(keyed.iter()) {
            let tokens: Vec<&str> = round.iter().map(|&i| keyed[i].subject.as_str()).collect();
            let owners: Vec<&str> = round.iter().map(|&i| keyed[i].owner.as_str()).collect();
            // Locked in token order, as the charges lock them.
            super::store::execute(
                &client,
                "WITH t AS (SELECT * FROM unnest($2::text[], $3::text[]) AS t(token, owner)),
                 locked AS MATERIALIZED (
                     SELECT d.token FROM pusher_device_limits d JOIN t ON d.token = t.token
                     WHERE d.app = (SELECT $1::text)
                       AND d.token = ANY((SELECT $2::text[])::text[])
                       AND t.owner = ANY(d.charged) AND NOT t.owner = ANY(d.sent)
                     ORDER BY d.token FOR UPDATE OF d)
                 UPDATE pusher_device_limits AS r
                     SET tat = least(r.tat, greatest(r.tat - $4 * interval '1 second',
                             now() + (array_position(r.charged, t.owner) - 1)
                                     * $4 * interval '1 second')),
                         charged = array_remove(r.charged, t.owner)
                     FROM t, locked
                     WHERE r.app = (SELECT $1::text) AND r.token = locked.token
                       AND r.token = t.token AND t.owner = ANY(r.charged)
                       AND NOT t.owner = ANY(r.sent)",
                &[&app, &tokens, &owners, &interval],
            )
            .await?;
        }
        Ok(())
    }

    /// Gives back dedup claims won for pushes that were then not sent (the device limit
    /// refused them, or a retry of the batch skipped them): held, they would make the next
    /// push of the message a "duplicate" of one the device never got (only where the claim is
    /// still theirs and unsent).
    pub async fn release_dedup(&self, app: &str, claims: &[Claim]) -> Result<(), StoreError> {
        if claims.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        for_each_claim(
            &client,
            "WITH locked AS MATERIALIZED (
                 SELECT d.token, d.message FROM pusher_dedup AS d
                 JOIN unnest($2::text[], $3::text[], $4::text[]) AS t(subject, message, owner)
                   ON d.token = t.subject AND d.message = t.message AND d.last_event = t.owner
                 WHERE d.app = (SELECT $1::text) AND d.token = ANY((SELECT $2::text[])::text[])
                   AND NOT d.sent
                 ORDER BY d.token, d.message FOR UPDATE OF d)
             DELETE FROM pusher_dedup AS d USING locked
             WHERE d.app = (SELECT $1::text) AND d.token = locked.token
               AND d.message = locked.message",
            app,
            claims,
        )
        .await
    }

    /// Gives back cooldown claims whose notification reached no device, or that a retry of
    /// the batch no longer sends (only where the claim is still theirs and unsent).
    pub async fn release_cooldowns(&self, app: &str, claims: &[Claim]) -> Result<(), StoreError> {
        if claims.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        for_each_claim(
            &client,
            "WITH locked AS MATERIALIZED (
                 SELECT c.user_id, c.message FROM pusher_cooldowns AS c
                 JOIN unnest($2::text[], $3::text[], $4::text[]) AS t(subject, message, owner)
                   ON c.user_id = t.subject::bigint AND c.message = t.message
                  AND c.last_event = t.owner
                 WHERE c.app = (SELECT $1::text)
                   AND c.user_id = ANY((SELECT $2::text[]::bigint[])::bigint[]) AND NOT c.sent
                 ORDER BY c.user_id, c.message FOR UPDATE OF c)
             DELETE FROM pusher_cooldowns AS c USING locked
             WHERE c.app = (SELECT $1::text) AND c.user_id = locked.user_id
               AND c.message = locked.message",
            app,
            claims,
        )
        .await
    }

    /// Marks cooldown and dedup claims as sent, once their pushes are in Kafka (only where
    /// the claim is still theirs), and the per-device limit's `charges` (subjects are tokens,
    /// `message` ignored; only owners the device still remembers): a redelivery that no
    /// longer sends them gives back none of them.
    pub async fn mark_sent(
        &self,
        app: &str,
        cooldowns: &[Claim],
        dedups: &[Claim],
        charges: &[Claim],
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        // The charges first: marked after the claims, a failure between left a redo that
        // skips the pair (its claims sent) with its charge unmarked, and so given back later.
        if !charges.is_empty() {
            let tokens: Vec<&str> = charges.iter().map(|c| c.subject.as_str()).collect();
            let owners: Vec<&str> = charges.iter().map(|c| c.owner.as_str()).collect();
            // One row per device (a device's owners aggregated: a statement may set a row once),
            // locked in token order as the charges lock them. `sent` keeps only owners the device
            // still remembers when it is marked.
            super::store::execute(
                &client,
                "WITH t AS (SELECT t.token, array_agg(t.owner) AS owners
                            FROM unnest($2::text[], $3::text[]) AS t(token, owner)
                            GROUP BY t.token),
                 locked AS MATERIALIZED (
                     SELECT d.token FROM pusher_device_limits d JOIN t ON d.token = t.token
                     WHERE d.app = (SELECT $1::text)
                       AND d.token = ANY((SELECT $2::text[])::text[])
                       AND EXISTS (SELECT 1 FROM unnest(t.owners) AS o
                                   WHERE o = ANY(d.charged) AND NOT o = ANY(d.sent))
                     ORDER BY d.token FOR UPDATE OF d)
                 UPDATE pusher_device_limits AS r
                     SET sent = ARRAY(SELECT DISTINCT o FROM unnest(t.owners || r.sent) AS o
                                      WHERE o = ANY(r.charged))
                     FROM t, locked
                     WHERE r.app = (SELECT $1::text) AND r.token = locked.token
                       AND r.token = t.token",
                &[&app, &tokens, &owners],
            )
            .await?;
        }
        for (claims, statement) in [
            (
                cooldowns,
                "WITH locked AS MATERIALIZED (
                     SELECT c.user_id, c.message FROM pusher_cooldowns AS c
                     JOIN unnest($2::text[], $3::text[], $4::text[]) AS t(subject, message, owner)
                       ON c.user_id = t.subject::bigint AND c.message = t.message
                      AND c.last_event = t.owner
                     WHERE c.app = (SELECT $1::text)
                       AND c.user_id = ANY((SELECT $2::text[]::bigint[])::bigint[])
                     ORDER BY c.user_id, c.message FOR UPDATE OF c)
                 UPDATE pusher_cooldowns AS c SET sent = true FROM locked
                 WHERE c.app = (SELECT $1::text) AND c.user_id = locked.user_id
                   AND c.message = locked.message",
            ),
            (
                dedups,
                "WITH locked AS MATERIALIZED (
                     SELECT d.token, d.message FROM pusher_dedup AS d
                     JOIN unnest($2::text[], $3::text[], $4::text[]) AS t(subject, message, owner)
                       ON d.token = t.subject AND d.message = t.message AND d.last_event = t.owner
                     WHERE d.app = (SELECT $1::text)
                       AND d.token = ANY((SELECT $2::text[])::text[])
                     ORDER BY d.token, d.message FOR UPDATE OF d)
                 UPDATE pusher_dedup AS d SET sent = true FROM locked
                 WHERE d.app = (SELECT $1::text) AND d.token = locked.token
                   AND d.message = locked.message",
            ),
        ] {
            for_each_claim(&client, statement, app, claims).await?;
        }
        Ok(())
    }
}

/// Runs `statement` once over `claims`, given as `$1` the app and `$2`, `$3`, `$4` the
/// subjects, messages and owners (nothing when there are none).
async fn for_each_claim(
    client: &deadpool_postgres::Client,
    statement: &str,
    app: &str,
    claims: &[Claim],
) -> Result<(), StoreError> {
    if claims.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Claim) -> &str| claims.iter().map(f).collect::<Vec<&str>>();
    super::store::execute(
        client,
        statement,
        &[
            &app,
            &col(|c| &c.subject),
            &col(|c| &c.message),
            &col(|c| &c.owner),
        ],
    )
    .await?;
    Ok(())
}

/// Splits claims into rounds where each (subject, message) appears once, in order: the
/// indexes of each round.
fn rounds<'a>(claims: impl Iterator<Item = &'a Claim>) -> Vec<Vec<usize>> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, c) in claims.enumerate() {
        let n = seen
            .entry((c.subject.as_str(), c.message.as_str()))
            .or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
}

/// Sets what the claims of `round` found from the rows returned (subject, message, sent):
/// a claim whose key came back was won, or already sent; the others were lost.
fn mark<'a>(
    found: &mut [Claimed],
    round: &[usize],
    claims: impl Iterator<Item = &'a Claim>,
    rows: &[tokio_postgres::Row],
) {
    let returned: HashMap<(String, String), bool> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let claims: Vec<&Claim> = claims.collect();
    for &i in round {
        let c = claims[i];
        found[i] = match returned.get(&(c.subject.clone(), c.message.clone())) {
            Some(false) => Claimed::Won,
            Some(true) => Claimed::Sent,
            None => Claimed::Lost,
        };
    }
}

/// `claims` keyed by device alone: a device's limit counts every message.
fn per_device(claims: &[Claim]) -> Vec<Claim> {
    claims
        .iter()
        .map(|c| Claim {
            message: String::new(),
            ..c.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(subject: &str, message: &str) -> Claim {
        Claim {
            subject: subject.into(),
            message: message.into(),
            owner: "e".into(),
        }
    }

    #[test]
    fn cooldowns_and_windows_are_bounded() {
        assert_eq!(bounded(60.0), 60.0);
        assert_eq!(bounded(1e13), 315_360_000.0);
        assert_eq!(bounded(-1.0), 0.0);
        assert_eq!(bounded(f64::NAN), 0.0);
        assert_eq!(bounded(f64::INFINITY), 315_360_000.0);
    }

    #[test]
    fn repeated_keys_go_to_later_rounds() {
        let claims = [
            claim("a", "m"),
            claim("b", "m"),
            claim("a", "m"),
            claim("a", "n"),
        ];
        assert_eq!(rounds(claims.iter()), vec![vec![0, 1, 3], vec![2]]);
    }
}

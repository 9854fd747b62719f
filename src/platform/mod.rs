//! The platform around the pusher (DESIGN.md §10): Kafka is the backbone, PostgreSQL holds
//! state, and every part scales by adding processes.
//!
//! - `api`: `pusher api`, the HTTP API (axum).
//! - `produce`: the Kafka producer whose "done" means every record was acknowledged.
//! - `store`: the PostgreSQL schema and the idempotency claims.
//! - `registry`: the device registry (PostgreSQL).
//! - `requests`: the requests topic's records (user-addressed notifications, events).
//! - `route`: `pusher route`, the consumer group that expands them.
//! - `events`: event mode, how route turns an event into notifications, with `messages`
//!   (messages, localizations, opt-outs), `claims` (cooldown, dedup, per-device limits) and
//!   `outbound` (the push and feedback records route writes).
//! - `results`: `pusher results`, the consumer group that stores every verdict.
//! - `consume`: the batch consume loop both groups share.
//! - `lag`: consumer groups' backlogs, the queue sizes of monitoring.
//! - `webhook`: the per-app call once a notification is complete.

pub mod api;
pub mod claims;
pub mod consume;
pub mod events;
pub mod lag;
pub mod messages;
pub mod outbound;
pub mod produce;
pub mod registry;
pub mod requests;
pub mod results;
pub mod route;
pub mod store;
pub mod webhook;

//! `pusher run`: Kafka consumer -> bounded dispatch -> sender -> outcome handlers ->
//! per-partition offset tracker (DESIGN.md §5).

mod apns;
pub mod feedback;
mod gcm;
mod kafka;
mod message;
pub mod offsets;
pub mod platform;
pub mod run;
pub mod stats;
mod status;
pub mod tokens;
mod webpush;

pub use kafka::PREFETCH_FULL_BACKOFF_MS;

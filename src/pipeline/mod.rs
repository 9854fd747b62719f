//! `pusher run`: Kafka consumer -> bounded dispatch -> sender -> outcome handlers ->
//! per-partition offset tracker (DESIGN.md §5).

pub mod cli;
pub mod feedback;
mod kafka;
mod message;
pub mod offsets;
pub mod run;
pub mod stats;
mod status;
pub mod tokens;

//! `pusher gen`: seeded generator of push messages (tokens, payloads, sinks).

pub mod cli;

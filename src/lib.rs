//! pusher: a benchmark-first toolkit for mobile push notifications.
//!
//! Dependency direction (DESIGN.md §2): `push` <- `sender` <- `pipeline` <- `bench` <- `replay`
//! <- `cli`, with `report` and `platform` (the HTTP API, its store) under `bench`; `config`, `telemetry`, `clock`, `runtime`, `progress`
//! and `units` beside `push` at the bottom; `mock` and `gen` depend only on those, never on
//! `sender`, so a sender bug cannot hide in the fake servers. `tests/layers.rs` checks it.
#![warn(clippy::unwrap_used)]

pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod gen;
pub mod mock;
pub mod pipeline;
pub mod platform;
pub mod progress;
pub mod push;
pub mod replay;
pub mod report;
pub mod runtime;
pub mod sender;
pub mod telemetry;
pub mod units;

//! pusher: a benchmark-first toolkit for mobile push notifications.
//!
//! Dependency direction (DESIGN.md §2): `push` <- `sender` <- {`pipeline`, `bench`, `replay`};
//! `mock` and `gen` depend only on `push`, never on `sender`, so a sender bug cannot hide in
//! the fake servers.
#![warn(clippy::unwrap_used)]

pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod gen;
pub mod mock;
pub mod pipeline;
pub mod progress;
pub mod push;
pub mod replay;
pub mod report;
pub mod runtime;
pub mod sender;
pub mod telemetry;

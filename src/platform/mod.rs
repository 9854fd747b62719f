//! The platform around the pusher (DESIGN.md §10): Kafka is the backbone, PostgreSQL holds
//! state, and every part scales by adding processes.
//!
//! - `api`: `pusher api`, the HTTP API (axum).
//! - `produce`: the Kafka producer whose "done" means every record was acknowledged.
//! - `store`: the PostgreSQL schema and statements.

pub mod api;
pub mod produce;
pub mod store;

//! `pusher replay`: the capture format, traffic shapes, the open-loop pacer, and Kafka range
//! reading (sorted in bounded memory). The measurement and the report are the bench's
//! (`crate::bench`).

pub mod capture;
pub mod kafka;
pub mod pace;
pub mod shape;
pub mod sort;

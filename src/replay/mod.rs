//! `pusher replay`: capture format and paced replay.

pub mod cli;

//! `pusher bench`: load plan, pacer, recorder, report, baseline gate.

pub mod cli;

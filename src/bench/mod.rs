//! `pusher bench`: load plan, driver (closed and open loop), recorder, report, baseline gate.

pub mod calibrate;
pub mod cli;
pub mod driver;
pub mod end_to_end;
pub mod fake;
pub mod gate;
pub mod interrupt;
pub mod recorder;
pub mod report;
pub mod sender_only;

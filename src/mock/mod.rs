//! Fake APNs and FCM servers: faithful protocol checks, scripted behaviour from profiles,
//! fault injection, admin counters. Depends only on `push`, never on `sender`.

pub mod cli;
pub mod kafka;

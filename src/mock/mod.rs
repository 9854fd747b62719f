//! Fake APNs, FCM and web push servers: faithful protocol checks, scripted behaviour from
//! profiles, fault injection, admin counters. Depends only on `push`, never on `sender`.
//!
//! `server` is the protocol-neutral core (listeners, TLS, connections, faults, counters, admin
//! endpoint); `apns`, `fcm` and `webpush` plug their protocols into it as a
//! [`server::Handler`].

pub mod apns;
pub mod fcm;
pub mod kafka;
pub mod profile;
pub mod server;
pub mod stats;
pub mod tls;
pub mod webpush;

pub use apns::{ApnsOptions, JwtKey};
pub use fcm::{FcmHandler, FcmOptions};
pub use profile::Profile;
pub use server::{MockConfig, MockServer};
pub use stats::{Stats, StatsSnapshot};
pub use tls::ServerCert;
pub use webpush::{WebPushHandler, WebPushOptions};

/// Why a fake server could not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    #[error("{0}")]
    Config(String),
}

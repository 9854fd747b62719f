//! A TCP proxy to the machine's PostgreSQL that a test can cut and restore, so "PostgreSQL is
//! down" never means stopping the real server (other tests use it). Down: new connections are
//! accepted and closed at once (as while the server restarts) and live ones are cut. Up: bytes
//! are forwarded. The proxy stops with the test's runtime.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const PG_PORT: u16 = 5432;

pub struct PgProxy {
    pub port: u16,
    up: watch::Sender<bool>,
    /// Connections refused or cut while down: proof that the client really met the outage.
    refused: Arc<AtomicU64>,
}

impl PgProxy {
    /// Starts on a free 127.0.0.1 port, forwarding to 127.0.0.1:5432 when `up`.
    pub async fn start(up: bool) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(up);
        let refused = Arc::new(AtomicU64::new(0));
        let counter = refused.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*rx.borrow() {
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(inbound);
                    continue;
                }
                let mut state = rx.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", PG_PORT)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !*up) => {
                            // Cut: both sockets close when dropped here.
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        PgProxy {
            port,
            up: tx,
            refused,
        }
    }

    /// Cuts live connections and refuses new ones.
    pub fn down(&self) {
        self.up.send_replace(false);
    }

    pub fn up(&self) {
        self.up.send_replace(true);
    }

    /// Connections refused or cut so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

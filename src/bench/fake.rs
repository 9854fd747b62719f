//! The embedded fake APNs or FCM server on its own thread and current_thread runtime, so that
//! the pusher and the fake each get a core, as they would on two machines.

use crate::mock::{
    FcmHandler, FcmOptions, JwtKey, MockConfig, MockServer, Profile, Stats, WebPushHandler,
    WebPushOptions,
};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::sync::Arc;

/// Which fake to run.
pub enum FakeKind {
    /// APNs, verifying every JWT against this provider key.
    Apns(JwtKey),
    /// FCM (HTTP v1 with its own OAuth `/token`, and legacy `/fcm/send`).
    Fcm,
    /// A web push service (VAPID and framing checked on every push; every Nth generated
    /// subscription's body decrypted: an ECDH each, which would make the fake the bottleneck).
    WebPush { decrypt_every: u64 },
}

/// The embedded fake server on its own thread and current_thread runtime.
pub struct FakeThread {
    pub tls: std::net::SocketAddr,
    pub h2c: std::net::SocketAddr,
    pub ca_file: PathBuf,
    pub stats: Arc<Stats>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl FakeThread {
    pub fn start(profile: Profile, kind: FakeKind) -> anyhow::Result<FakeThread> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("fake server runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut config = MockConfig {
                        profile,
                        ..MockConfig::default()
                    };
                    let started = match kind {
                        FakeKind::Apns(jwt) => {
                            config.apns.jwt_keys = vec![jwt];
                            MockServer::start(config).await
                        }
                        FakeKind::Fcm => {
                            let handler = FcmHandler::new(FcmOptions::default());
                            MockServer::start_with(config, handler).await
                        }
                        FakeKind::WebPush { decrypt_every } => {
                            let handler = WebPushHandler::new(WebPushOptions {
                                decrypt_every,
                                ..WebPushOptions::default()
                            });
                            MockServer::start_with(config, handler).await
                        }
                    };
                    match started {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok((
                                server.tls_addr(),
                                server.h2c_addr(),
                                server.ca_pem().to_string(),
                                server.stats(),
                            )));
                            let _ = stop_rx.await;
                            server.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::anyhow!("fake server: {e}")));
                        }
                    }
                });
            })?;
        let (tls, h2c, ca, stats) = ready_rx.recv().context("fake server thread died")??;
        let (Some(tls), Some(h2c)) = (tls, h2c) else {
            bail!("fake server has no listeners");
        };
        let ca_file =
            std::env::temp_dir().join(format!("pusher-bench-ca-{}.pem", std::process::id()));
        std::fs::write(&ca_file, ca).with_context(|| format!("writing {}", ca_file.display()))?;
        Ok(FakeThread {
            tls,
            h2c,
            ca_file,
            stats,
            stop: stop_tx,
            thread,
        })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

//! A running fake server (APNs or FCM) and its CA written to a file for `--ca`; shared by the
//! APNs helpers (tests/common) and the FCM helpers (tests/fcm_support).

use pusher::mock::{MockServer, StatsSnapshot};
use std::path::PathBuf;

pub struct Fake {
    pub server: MockServer,
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fake {
    /// Wraps a started server, writing its CA where clients can read it.
    pub fn new(server: MockServer) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("fake-ca.pem");
        std::fs::write(&ca_file, server.ca_pem()).unwrap();
        Fake {
            server,
            ca_file,
            _dir: dir,
        }
    }
    pub fn tls_url(&self) -> String {
        format!(
            "https://127.0.0.1:{}",
            self.server.tls_addr().unwrap().port()
        )
    }
    pub fn h2c_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.server.h2c_addr().unwrap().port()
        )
    }
    pub fn stats(&self) -> StatsSnapshot {
        self.server.stats().snapshot()
    }
}

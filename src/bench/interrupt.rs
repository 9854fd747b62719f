//! SIGINT and SIGTERM during `pusher bench` and `pusher replay`: the first stops the run (no new
//! message starts; those in flight get [`DRAIN`] to finish), and the command reports what ran,
//! marked interrupted, and exits 130. A second signal exits 130 at once.
//!
//! The handler is installed even where SIGINT was ignored: a shell without job control starts
//! `pusher replay ... &` with SIGINT ignored, and `kill -INT` must still stop it.

use parking_lot::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long messages in flight may take to finish once a run is interrupted; what is still in
/// flight after it is reported as such.
pub const DRAIN: Duration = Duration::from_secs(5);

/// The exit status of an interrupted run (128 + SIGINT, as shells report it).
pub const EXIT_CODE: u8 = 130;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("cannot watch for SIGINT and SIGTERM: {0}")]
    Watch(#[from] std::io::Error),
}

/// Cancelled by the first SIGINT or SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(CancellationToken);

static INSTALLED: Mutex<Option<Interrupt>> = Mutex::new(None);

impl Interrupt {
    /// Watches SIGINT and SIGTERM for the rest of the process (on a thread of its own, so the
    /// runs' runtimes can come and go). Returns once the handlers are in place; installing
    /// again returns the same.
    pub fn install() -> Result<Interrupt, InterruptError> {
        Interrupt::install_saying(format!(
            "pusher: interrupted: no new messages; waiting up to {}s for those in flight, then the report (interrupt again to exit now)",
            DRAIN.as_secs()
        ))
    }

    /// [`Interrupt::install`] for a command with nothing in flight to wait for (`gen`, an
    /// export): the first signal's notice says only that it stops.
    pub fn install_plain() -> Result<Interrupt, InterruptError> {
        Interrupt::install_saying(
            "pusher: interrupted: stopping (interrupt again to exit now)".to_owned(),
        )
    }

    fn install_saying(notice: String) -> Result<Interrupt, InterruptError> {
        let mut installed = INSTALLED.lock();
        if let Some(i) = installed.as_ref() {
            return Ok(i.clone());
        }
        let interrupt = Interrupt::default();
        let token = interrupt.0.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pusher-signals".into())
            .spawn(move || watch(token, &notice, ready_tx))?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the signal thread ended"))??;
        *installed = Some(interrupt.clone());
        Ok(interrupt)
    }

    /// One that only [`Interrupt::token`]'s `cancel` sets (tests, library callers).
    pub fn manual() -> Interrupt {
        Interrupt::default()
    }

    pub fn is_set(&self) -> bool {
        self.0.is_cancelled()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.0
    }

    /// One that is set with this one, or on its own (a run stopped for another reason).
    pub fn child(&self) -> Interrupt {
        Interrupt(self.0.child_token())
    }

    /// A run's interrupt that is also set by the first endpoint fault of any of `gates` (a
    /// wrong CA, refused credentials, an unreachable token endpoint): a benchmark against an
    /// endpoint that cannot answer measures nothing, so it stops and says why. Call inside the
    /// run's runtime; the cause is in the returned cell once set.
    pub fn or_endpoint_fault(&self, gates: &[crate::sender::Gate]) -> (Interrupt, EndpointFault) {
        let run = self.child();
        let fault = EndpointFault::default();
        for gate in gates {
            let mut health = gate.health();
            let (stop, cell) = (run.0.clone(), fault.0.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = health.changed() => if changed.is_err() { return },
                    }
                    let down = match &*health.borrow_and_update() {
                        crate::sender::Health::Down { cause, .. } => Some(cause.clone()),
                        crate::sender::Health::Up => None,
                    };
                    if let Some(cause) = down {
                        // The first fault stops the run; it is the one reported.
                        cell.lock().get_or_insert(cause);
                        stop.cancel();
                        return;
                    }
                }
            });
        }
        (run, fault)
    }
}

/// The endpoint fault that stopped a run, if one did.
#[derive(Debug, Clone, Default)]
pub struct EndpointFault(std::sync::Arc<Mutex<Option<String>>>);

impl EndpointFault {
    pub fn cause(&self) -> Option<String> {
        self.0.lock().clone()
    }

    /// An error naming the cause, when the run stopped on one.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.cause() {
            Some(cause) => Err(anyhow::anyhow!(
                "the endpoint failed, not the messages: {cause}; nothing to measure"
            )),
            None => Ok(()),
        }
    }
}

fn watch(
    token: CancellationToken,
    notice: &str,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let streams = signal(SignalKind::interrupt())
            .and_then(|int| Ok((int, signal(SignalKind::terminate())?)));
        let (mut int, mut term) = match streams {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                crate::progress::eprintln_above(notice);
                token.cancel();
            } else {
                crate::progress::eprintln_above(
                    "pusher: interrupted again: exiting now, no report",
                );
                std::process::exit(i32::from(EXIT_CODE));
            }
        }
    });
}

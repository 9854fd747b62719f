//! The endpoint gate: what a sender does when a failure is the endpoint's or the
//! configuration's, not the message's (the TLS certificate does not verify, no address takes a
//! connection, the credentials are refused on every request, the OAuth token endpoint cannot be
//! reached). Such a failure says nothing about the message, so it must not spend the message's
//! retries nor end it: a wrong CA once turned a backlog into `gave_up` in seconds.
//!
//! In [`OnFault::Wait`] (the production pusher) the gate closes on the first such failure: the
//! cause is logged once, every send waits, and one send at a time probes the endpoint again
//! after a back-off (1 s doubling to 5 s). The first probe that gets a final answer opens
//! the gate and the waiting sends go on. In [`OnFault::Fail`] (one-shot commands, benchmarks)
//! the send ends at once with the cause, for the caller to report.
//!
//! An outage (APNs or FCM answering 503 to everything, an endpoint that stopped answering) is
//! retryable answer by retryable answer, each of which could be the message's own (a 429 for
//! one device). It becomes the endpoint's fault when a message has spent its retries and no
//! send at all got a final answer since its first retryable one (past its budget, since its
//! previous answer): then the gate closes, as above, and that message's retries are given back. While the gate is closed, a retryable
//! answer (a probe's, or a send's that left before it closed) is the outage's too.
//!
//! Written here rather than taken from a circuit-breaker crate: those count failure ratios over
//! windows, while this needs "one failure of this kind is enough, then exactly one probe", with
//! the waiting sends parked (not failed) and counted.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// What a send does when the endpoint, not the message, is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFault {
    /// End the send at once with the cause (the caller reports it and stops).
    #[default]
    Fail,
    /// Wait until the endpoint answers again; one send at a time probes it.
    Wait,
}

/// The endpoint as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    Down {
        /// The failure, in full (the TLS error text, the refused credentials' reason).
        cause: String,
        since: SystemTime,
    },
}

impl Health {
    pub fn is_up(&self) -> bool {
        matches!(self, Health::Up)
    }
}

/// How unlikely a run of retryable answers must be at the endpoint's rate to be a message's own.
const BAD_LUCK: f64 = 1e-6;
/// First answers the partial-outage rate remembers (between this and twice as many).
const RECENT: u64 = 1_024;
/// Retryable answers in a row after which a message gives up whatever the rate (past the
/// budget, with the policy's back-off: minutes): an endpoint that fails nearly every first try
/// and still judges a few is an outage by another name, and its messages must end some time.
pub const MAX_UNLUCKY: u32 = 30;

const FIRST_PROBE: Duration = Duration::from_secs(1);
/// One request every 5 s at most: nothing to an endpoint, and an outage's end is seen soon.
const MAX_PROBE: Duration = Duration::from_secs(5);

/// The probes' schedule: the retry policy's doubling ceiling (1 s, 2 s, 4 s, 5 s ...), without
/// jitter: there is one probe at a time, so no herd to spread.
fn probe_after(failed_probes: u32) -> Duration {
    super::retry::RetryPolicy::unbounded(FIRST_PROBE, MAX_PROBE).backoff_ceiling(failed_probes)
}

#[derive(Debug)]
struct Down {
    next_probe: Instant,
    /// Probes that failed since the endpoint went down (the first failure counts as one).
    failures: u32,
    /// A send is probing now; the others wait for its answer.
    probing: bool,
}

#[derive(Debug)]
struct Inner {
    /// What the gate serves (`apns game`), for its log lines and causes.
    name: String,
    on_fault: OnFault,
    down: Mutex<Option<Down>>,
    changed: Notify,
    health: watch::Sender<Health>,
    /// Sends waiting for the endpoint now.
    parked: AtomicUsize,
    /// Final answers so far (any send's): whether the endpoint judged anything since.
    finals: AtomicU64,
    /// Messages' recent first answers, and how many of them asked to retry: how often the
    /// endpoint fails a message's first try lately (see [`Gate::explains`]). Both are halved
    /// when the first reaches `2 * RECENT`. First answers only: a message the endpoint fails
    /// every time would otherwise raise the rate with each retry.
    first_answers: AtomicU64,
    first_retryables: AtomicU64,
    /// Times the gate closed (changed under `down`'s lock): an answer to an attempt admitted
    /// before the last close says nothing of the endpoint now.
    closes: AtomicU64,
}

/// One gate per endpoint a sender judges apart (an APNs or FCM app's endpoint; each push
/// service of a web push app, whose outages are their own): clone it freely.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

/// Leave to make one attempt. Report how it went with [`Permit::fault`] or
/// [`Permit::answered`]; a probe dropped without a report (its send was cancelled) hands the
/// probe to the next send.
#[must_use]
pub struct Permit {
    gate: Gate,
    probe: bool,
    /// The gate's closes when it was given.
    closes: u64,
}

impl Gate {
    pub fn new(name: impl Into<String>, on_fault: OnFault) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                name: name.into(),
                on_fault,
                down: Mutex::new(None),
                changed: Notify::new(),
                health: watch::Sender::new(Health::Up),
                parked: AtomicUsize::new(0),
                finals: AtomicU64::new(0),
                first_answers: AtomicU64::new(0),
                first_retryables: AtomicU64::new(0),
                closes: AtomicU64::new(0),
            }),
        }
    }

    pub fn on_fault(&self) -> OnFault {
        self.inner.on_fault
    }

    /// What the gate serves (`apns game`, `webpush game push.services.mozilla.com`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The endpoint's health; a receiver sees every change.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// Sends waiting for the endpoint to answer again.
    pub fn parked(&self) -> usize {
        self.inner.parked.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is down with its probe due and no send to make it: the sends that
    /// waited have ended (expired, or one alone gave up), and until another comes nothing
    /// learns that the endpoint answers again.
    pub fn awaits_a_probe(&self) -> bool {
        self.parked() == 0
            && self
                .inner
                .down
                .lock()
                .as_ref()
                .is_some_and(|d| !d.probing && Instant::now() >= d.next_probe)
    }

    /// Final answers the endpoint gave so far, to any send.
    pub fn finals(&self) -> u64 {
        self.inner.finals.load(Ordering::Relaxed)
    }

    /// Counts a message's first answer (a verdict, or a request to retry).
    pub fn count_first_answer(&self, retryable: bool) {
        let answers = self.inner.first_answers.fetch_add(1, Ordering::Relaxed) + 1;
        if retryable {
            self.inner.first_retryables.fetch_add(1, Ordering::Relaxed);
        }
        // Halved by the one send that sees the mark: the rate stays, its memory is recent.
        // A count added between the two halvings skews it by one answer in a thousand.
        if answers >= 2 * RECENT
            && self
                .inner
                .first_answers
                .compare_exchange(answers, answers / 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.inner.first_retryables.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |r| Some(r / 2),
            );
        }
    }

    /// Whether the endpoint's own failure rate explains a message's run of `failed` retryable
    /// answers (its retries spent): of the recent first answers of messages (about the last
    /// [`RECENT`] to `2 * RECENT`), a share `f` asked to retry, and `f^failed` is over one in a
    /// million, for at most [`MAX_UNLUCKY`] answers. Then the run is the endpoint's bad luck (a
    /// partial outage: half its answers 503), not the message's, and it must not end
    /// `gave_up`: before, such a brownout ended about `f^3` of a backlog so, committed, and
    /// the gate never closed. A message the endpoint fails while it judges the others' first
    /// tries (a payload that draws a 500 every time) gives up at its budget.
    pub fn explains(&self, failed: u32) -> bool {
        let answers = self.inner.first_answers.load(Ordering::Relaxed);
        let retryables = self.inner.first_retryables.load(Ordering::Relaxed);
        if answers == 0 || failed >= MAX_UNLUCKY {
            return false;
        }
        let rate = (retryables as f64 / answers as f64).min(1.0);
        rate.powi(failed as i32) > BAD_LUCK
    }

    /// Waits for leave to attempt: at once while the endpoint is up (or in `Fail`), else until
    /// it is up again or this send's turn to probe it.
    pub async fn admit(&self) -> Permit {
        if self.inner.on_fault == OnFault::Fail {
            return self.permit(false);
        }
        let mut parked: Option<ParkedGuard<'_>> = None;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read: a change in between still wakes us.
            notified.as_mut().enable();
            let wake_at = {
                let mut down = self.inner.down.lock();
                match down.as_mut() {
                    None => return self.permit(false),
                    Some(d) if !d.probing && Instant::now() >= d.next_probe => {
                        d.probing = true;
                        return self.permit(true);
                    }
                    Some(d) => (!d.probing).then_some(d.next_probe),
                }
            };
            if parked.is_none() {
                parked = Some(ParkedGuard::new(&self.inner.parked));
            }
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            gate: self.clone(),
            probe,
            closes: self.inner.closes.load(Ordering::Relaxed),
        }
    }

    /// `probe`: the failure is the probe's, which alone moves the probes' schedule on (the
    /// sends that left before the gate closed fail too, and must not push it to its end).
    fn fault(&self, cause: &str, probe: bool) {
        self.fault_if(cause, probe, |_| true);
    }

    /// [`Gate::fault`] when `decide` (told whether the gate is closed) says so, decided under
    /// the gate's lock: an answer that opens the gate between a look and a close cannot be
    /// undone by a stale failure. Returns the decision.
    fn fault_if(&self, cause: &str, probe: bool, decide: impl FnOnce(bool) -> bool) -> bool {
        let mut down = self.inner.down.lock();
        if !decide(down.is_some()) {
            return false;
        }
        match down.as_mut() {
            Some(_) if !probe => return true,
            Some(d) => {
                d.probing = false;
                d.failures += 1;
                let wait = probe_after(d.failures);
                d.next_probe = Instant::now() + wait;
                // A new cause replaces the old in `/healthz` and is logged: the endpoint down
                // at start, then up with a certificate we do not trust, went on saying
                // "Connection refused".
                let changed = self.inner.health.send_if_modified(|health| match health {
                    Health::Down { cause: old, .. } if old != cause => {
                        *old = cause.to_string();
                        true
                    }
                    _ => false,
                });
                if changed {
                    tracing::error!(gate = %self.inner.name, cause, retry_in = ?wait, "Endpoint still failing, now for another cause.");
                } else {
                    tracing::debug!(gate = %self.inner.name, cause, retry_in = ?wait, "Endpoint still failing.");
                }
            }
            None => {
                self.inner.closes.fetch_add(1, Ordering::Relaxed);
                *down = Some(Down {
                    next_probe: Instant::now() + probe_after(1),
                    failures: 1,
                    probing: false,
                });
                match self.inner.on_fault {
                    OnFault::Wait => tracing::error!(
                        gate = %self.inner.name,
                        cause,
                        "Endpoint failing (not the messages' fault): pausing; messages are kept and sent once it answers."
                    ),
                    OnFault::Fail => {
                        tracing::error!(gate = %self.inner.name, cause, "Endpoint failing.")
                    }
                }
                self.inner.health.send_replace(Health::Down {
                    cause: cause.to_string(),
                    since: SystemTime::now(),
                });
            }
        }
        drop(down);
        self.inner.changed.notify_waiters();
        true
    }

    /// A final answer to an attempt admitted when the gate had closed `closes` times: it opens
    /// the gate only if the gate has not closed since (a probe, or a send admitted after the
    /// last close). An answer to a request sent before the close says nothing of the endpoint
    /// now: when a slow endpoint restarted, each such answer reopened the gate and the next
    /// send closed it again, a thousand times in 10 ms, each with an ERROR line.
    fn answered(&self, closes: u64) {
        self.inner.finals.fetch_add(1, Ordering::Relaxed);
        let mut down = self.inner.down.lock();
        if down.is_some() && self.inner.closes.load(Ordering::Relaxed) == closes {
            *down = None;
            drop(down);
            tracing::info!(gate = %self.inner.name, "Endpoint answers again: resuming.");
            self.inner.health.send_replace(Health::Up);
            self.inner.changed.notify_waiters();
        }
    }

    fn probe_abandoned(&self) {
        if let Some(d) = self.inner.down.lock().as_mut() {
            d.probing = false;
        }
        self.inner.changed.notify_waiters();
    }
}

impl Permit {
    /// The attempt failed for a reason that is the endpoint's or the configuration's.
    pub fn fault(mut self, cause: &str) {
        let probe = std::mem::replace(&mut self.probe, false);
        self.gate.fault(cause, probe);
    }

    /// The attempt got a final answer: the endpoint works.
    pub fn answered(mut self) {
        self.probe = false;
        self.gate.answered(self.closes);
    }

    /// The attempt got an answer that asks to retry (429, 5xx, a timeout, a reset). Returns
    /// true when that is the endpoint failing, not the message, and the send must wait at the
    /// gate with its retries given back (only in [`OnFault::Wait`]): the gate is closed
    /// already, or `exhausted` (the message's retries are spent) and no send got a final
    /// answer since `finals_before` (taken at the message's first retryable answer, and past
    /// its budget at its previous one).
    pub fn retry(mut self, cause: &str, exhausted: bool, finals_before: u64) -> bool {
        let probe = std::mem::replace(&mut self.probe, false);
        if self.gate.inner.on_fault == OnFault::Fail {
            return false;
        }
        let gate = &self.gate;
        let outage = gate.fault_if(
            &format!("{cause} on every retry, and no send got a final answer meanwhile"),
            probe,
            |down| down || (exhausted && gate.finals() == finals_before),
        );
        if !outage && probe {
            // The gate opened meanwhile (another send's answer): nothing to probe.
            gate.probe_abandoned();
        }
        outage
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe {
            self.gate.probe_abandoned();
        }
    }
}

/// Counts a send as parked for as long as it waits.
struct ParkedGuard<'a>(&'a AtomicUsize);

impl<'a> ParkedGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ParkedGuard(counter)
    }
}

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_fault_closes_the_gate_then_one_probe_at_a_time_reopens_it() {
        let gate = Gate::new("test", OnFault::Wait);
        let mut health = gate.health();
        gate.admit().await.fault("TLS: UnknownIssuer");
        assert!(!health.borrow_and_update().is_up());
        // Ten sends wait; none gets through before the first probe is due.
        let started = Instant::now();
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let permit = gate.admit().await;
                    (permit.probe, permit)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.parked(), 10);
        // The first probe is due after 1 s; it fails, and the next after 2 s more.
        let mut probes = Vec::new();
        let mut rest = Vec::new();
        for w in waiting {
            rest.push(w);
        }
        // Exactly one of them is let through to probe.
        let (first_probe, permit) = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(i) = rest.iter().position(|h| h.is_finished()) {
                break rest.remove(i).await.unwrap();
            }
        };
        assert!(first_probe);
        assert!(started.elapsed() >= FIRST_PROBE);
        probes.push(started.elapsed());
        permit.fault("still down");
        let (second_probe, permit) = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(i) = rest.iter().position(|h| h.is_finished()) {
                break rest.remove(i).await.unwrap();
            }
        };
        assert!(second_probe);
        assert!(
            started.elapsed() >= FIRST_PROBE * 3,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(rest.iter().filter(|h| h.is_finished()).count(), 0);
        // It answers: everyone goes, as plain (non-probe) attempts.
        permit.answered();
        for h in rest {
            let (probe, permit) = h.await.unwrap();
            assert!(!probe);
            permit.answered();
        }
        assert!(health.borrow_and_update().is_up());
        assert_eq!(gate.parked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_hands_the_turn_on() {
        let gate = Gate::new("test", OnFault::Wait);
        gate.admit().await.fault("refused");
        tokio::time::sleep(FIRST_PROBE).await;
        let probe = gate.admit().await;
        assert!(probe.probe);
        drop(probe);
        let next = tokio::time::timeout(Duration::from_millis(10), gate.admit())
            .await
            .expect("the next send probes at once");
        assert!(next.probe);
    }

    /// A slow endpoint restarted: the answers to requests sent before the gate closed came
    /// in after it, each reopened the gate and the next send closed it again (997 pairs of
    /// ERROR lines in 10 ms). Only an attempt admitted since the close (the probe) opens it.
    #[tokio::test(start_paused = true)]
    async fn an_answer_sent_before_the_close_does_not_reopen_it() {
        let gate = Gate::new("test", OnFault::Wait);
        let early: Vec<Permit> = vec![gate.admit().await, gate.admit().await];
        gate.admit()
            .await
            .fault("connect_error: Connection refused");
        for permit in early {
            permit.answered();
        }
        assert!(!gate.health().borrow().is_up());
        assert_eq!(gate.finals(), 2, "counted all the same");
        tokio::time::sleep(FIRST_PROBE).await;
        let probe = gate.admit().await;
        assert!(probe.probe);
        probe.answered();
        assert!(gate.health().borrow().is_up());
        // Closed again: a permit from the open spell is stale again.
        let early = gate.admit().await;
        gate.admit().await.fault("again");
        early.answered();
        assert!(!gate.health().borrow().is_up());
    }

    /// The endpoint down at start, then up with a certificate we do not trust: `/healthz`
    /// went on saying "Connection refused".
    #[tokio::test(start_paused = true)]
    async fn a_probe_s_new_cause_replaces_the_old() {
        let gate = Gate::new("test", OnFault::Wait);
        gate.admit()
            .await
            .fault("connect_error: Connection refused");
        tokio::time::sleep(FIRST_PROBE).await;
        gate.admit()
            .await
            .fault("connect_error: TLS: invalid peer certificate: UnknownIssuer");
        let cause = match gate.health().borrow().clone() {
            Health::Down { cause, .. } => cause,
            Health::Up => panic!("up"),
        };
        assert!(cause.contains("UnknownIssuer"), "{cause}");
    }

    #[tokio::test]
    async fn fail_mode_never_waits() {
        let gate = Gate::new("test", OnFault::Fail);
        gate.admit().await.fault("refused");
        assert!(!gate.health().borrow().is_up());
        let permit = tokio::time::timeout(Duration::from_millis(50), gate.admit())
            .await
            .expect("no wait in Fail mode");
        permit.answered();
        assert!(gate.health().borrow().is_up());
    }
}

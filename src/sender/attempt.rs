//! The one attempt loop of every sender: attempt, read the verdict, and either finish, retry
//! on a timer (the retry policy), or hand an endpoint fault to the gate. The protocol modules
//! only say how one attempt goes.

use super::gate::{Gate, OnFault};
use super::pool::TransportError;
use super::retry::RetryPolicy;
use crate::push::{Outcome, RetryHint, Verdict};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How one attempt went: the answer the protocol keeps (`R`), if any, and its verdict.
pub struct Attempt<R> {
    pub answer: Option<R>,
    pub verdict: Verdict,
    /// The failure in full when there was no answer (the verdict keeps a short label).
    pub error: Option<String>,
    /// Its words for the gate's cause when it is retried: `error` without the address
    /// connected to (the hosts of one push service differ from probe to probe).
    pub detail: Option<String>,
    /// Nothing went on the wire: we refused the push ourselves ([`Attempt::unsent`]).
    pub unsent: bool,
}

impl<R> Attempt<R> {
    pub fn answered(answer: R, verdict: Verdict) -> Attempt<R> {
        Attempt {
            answer: Some(answer),
            verdict,
            error: None,
            detail: None,
            unsent: false,
        }
    }

    /// No answer: a failure to connect at all is the endpoint's fault; anything else on an
    /// open connection (a timeout, a reset, GOAWAY) is retried within the message's budget.
    pub fn transport(e: &TransportError) -> Attempt<R> {
        let verdict = if e.is_endpoint_fault() {
            Verdict::Fault {
                reason: e.kind().to_string(),
            }
        } else {
            Verdict::Retry(RetryHint::new(e.kind()).reconnect())
        };
        Attempt {
            answer: None,
            verdict,
            error: Some(e.to_string()),
            detail: Some(e.detail()),
            unsent: false,
        }
    }

    /// No answer, for a reason that is the configuration's (credentials that cannot be used).
    pub fn fault(reason: &str, error: String) -> Attempt<R> {
        Attempt {
            answer: None,
            verdict: Verdict::Fault {
                reason: reason.to_string(),
            },
            error: Some(error),
            detail: None,
            unsent: false,
        }
    }

    /// No request: we refused the push before anything went on the wire (a token that is not
    /// hex, a body that cannot be built). Final for the push, but no word of the endpoint's:
    /// it neither shows the endpoint answering (which would keep an outage from being seen,
    /// or open a closed gate) nor spends the message's budget.
    pub fn unsent(outcome: Outcome) -> Attempt<R> {
        Attempt {
            answer: None,
            verdict: Verdict::Final(outcome),
            error: None,
            detail: None,
            unsent: true,
        }
    }
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempts<R> {
    pub outcome: Outcome,
    /// The last answer, if any attempt got one.
    pub answer: Option<R>,
    /// Attempts counted against the retry budget (waits on a failing endpoint are not).
    pub attempts: u32,
    /// The last attempt's failure in full, when it got no answer.
    pub error: Option<String>,
    /// Set when the push ended on an endpoint fault (only with [`OnFault::Fail`]): the cause
    /// in full, for the caller to report and stop.
    pub endpoint_fault: Option<String>,
}

/// When a message stops being worth sending (its `push_expiry`), on the runtime's timer: a
/// message that waited past it (at a closed gate, between retries) ends `Expired`, unsent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline.
    pub const NONE: Deadline = Deadline(None);

    /// `push_expiry_ms`: Unix milliseconds, 0 for never; `now`: the sender's clock.
    pub fn from_push_expiry(push_expiry_ms: i64, now: Duration) -> Deadline {
        if push_expiry_ms <= 0 {
            return Deadline::NONE;
        }
        let left = Duration::from_millis(push_expiry_ms as u64).saturating_sub(now);
        Deadline(Some(Instant::now() + left))
    }

    pub fn passed(&self) -> bool {
        self.0.is_some_and(|at| Instant::now() >= at)
    }

    /// Time left before it passes; `None` without a deadline.
    pub fn left(&self) -> Option<Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Resolves when it passes; never without one.
    pub async fn reached(&self) {
        match self.0 {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// How many times a message alone in flight may wait out an outage (about one probe each, 1 s
/// doubling to 5 s apart: ~45 s) before it gives up. Alone, a message that gets a 5xx every
/// time looks just like an outage, and would hold its app paused for good (its partitions are
/// paused, so nothing else comes). While other messages wait, it waits with them.
pub const OUTAGE_PROBES: u32 = 10;

/// Attempts until a final verdict. Retries wait on timers (other sends go on meanwhile);
/// stale credentials are renewed and retried at once, but refused twice in a row they are an
/// endpoint fault; an endpoint fault waits at the gate (or ends the push in `Fail`). Past
/// `deadline`, no attempt is made: the push ends `Expired`.
pub async fn attempt_until_final<R, F, Fut>(
    policy: &RetryPolicy,
    gate: &Gate,
    deadline: Deadline,
    mut attempt: F,
) -> Attempts<R>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<R>>,
{
    let mut done = Attempts {
        outcome: Outcome::Delivered,
        answer: None,
        attempts: 0,
        error: None,
        endpoint_fault: None,
    };
    let mut renewed = false;
    // At this message's first retryable answer (past its budget: its previous answer): the
    // gate's final answers, and the attempts it had made before (what an outage gives back).
    let mut first_retry: Option<(u64, u32)> = None;
    // Whether the endpoint has answered this message yet (see `Gate::count_first_answer`).
    let mut answered = false;
    // Times this message's retries were given back for an outage: at most OUTAGE_PROBES.
    let mut given_back = 0;
    loop {
        let permit = tokio::select! {
            // The gate first: open, it admits at once and the deadline's timer is never set.
            biased;
            permit = gate.admit() => permit,
            () = deadline.reached() => {
                done.outcome = Outcome::Expired;
                return done;
            }
        };
        if deadline.passed() {
            // Dropped unused: a probe's turn goes to the next send.
            drop(permit);
            done.outcome = Outcome::Expired;
            return done;
        }
        // Taken as the attempt leaves, so that other sends' answers during its round trip
        // count: with a budget of one attempt, the look comes right after the answer.
        let finals_at_send = gate.finals();
        done.attempts += 1;
        let Attempt {
            answer,
            mut verdict,
            error,
            detail,
            unsent,
        } = attempt().await;
        let got_answer = answer.is_some();
        if got_answer {
            done.answer = answer;
        }
        done.error = error;
        if let Verdict::Retry(hint) = &verdict {
            if hint.renew_auth && renewed {
                // Fresh credentials refused again: they are wrong, not stale.
                verdict = Verdict::Fault {
                    reason: hint.reason.clone(),
                };
            }
        }
        match verdict {
            Verdict::Final(outcome) if unsent => {
                // Nothing was sent: the gate learnt nothing (dropped, a probe's turn goes to
                // the next send), and no attempt was made.
                drop(permit);
                done.attempts -= 1;
                done.outcome = outcome;
                return done;
            }
            Verdict::Final(outcome) => {
                if !answered {
                    gate.count_first_answer(false);
                }
                permit.answered();
                done.outcome = outcome;
                return done;
            }
            Verdict::Fault { reason } => {
                let cause = match &done.error {
                    Some(e) => format!("{reason}: {e}"),
                    None => reason.clone(),
                };
                permit.fault(&cause);
                match gate.on_fault() {
                    OnFault::Fail => {
                        // The vendor refused (credentials): rejected; no answer at all:
                        // given up.
                        done.outcome = if got_answer {
                            Outcome::Rejected { reason }
                        } else {
                            Outcome::GaveUp { reason }
                        };
                        done.endpoint_fault = Some(cause);
                        return done;
                    }
                    // Not the message's fault: its budget is untouched.
                    OnFault::Wait => {
                        done.attempts -= 1;
                        renewed = false;
                    }
                }
            }
            Verdict::Retry(hint) if hint.renew_auth => {
                // Our stale credentials (the sender renewed them), not the message: retried at
                // once and not charged. Refused again, they are a fault (above). Not reported
                // to the gate either: the retry is this send's next report (a probe's turn
                // comes straight back to it).
                drop(permit);
                done.attempts -= 1;
                renewed = true;
            }
            Verdict::Retry(hint) => {
                if !std::mem::replace(&mut answered, true) {
                    gate.count_first_answer(true);
                }
                let (finals_before, attempts_before) =
                    *first_retry.get_or_insert((finals_at_send, done.attempts - 1));
                let exhausted = !policy.should_retry(done.attempts);
                // With the transport's words, as a fault's cause: "connect_error" alone hid a
                // push service's untrusted certificate.
                let cause = match &detail {
                    Some(d) => format!("{}: {d}", hint.reason),
                    None => hint.reason.clone(),
                };
                if permit.retry(&cause, exhausted && !hint.own, finals_before) {
                    given_back += 1;
                    // Others wait too: an outage, whose end this message waits for. Alone,
                    // past OUTAGE_PROBES, it gives up (see there).
                    if given_back <= OUTAGE_PROBES || gate.parked() > 0 {
                        // The endpoint's outage, not the message's: its retries are given
                        // back, and it waits at the gate.
                        done.attempts = attempts_before;
                        first_retry = None;
                        renewed = false;
                        continue;
                    }
                    // Alone in flight, a message APNs answers 5xx to every time looks like an
                    // outage too, and would hold its app paused for good.
                    done.outcome = Outcome::GaveUp {
                        reason: hint.reason,
                    };
                    return done;
                }
                renewed = false;
                // Past its budget, a message waiting on the endpoint (not its own device's
                // 429) goes on while the endpoint's failure rate explains its failures: the
                // endpoint's partial outage is not the message's fault.
                let bad_luck = gate.on_fault() == OnFault::Wait
                    && !hint.own
                    && gate.explains(done.attempts - attempts_before);
                if exhausted && !bad_luck {
                    done.outcome = Outcome::GaveUp {
                        reason: hint.reason,
                    };
                    return done;
                }
                if exhausted {
                    // Past its budget on the endpoint's bad luck: the next answer is judged by
                    // what the endpoint judged since this one. Judged against its first retry
                    // alone, a backlog whose first burst drew a few verdicts (dead tokens)
                    // before a 503 storm never closed the gate, and drained as gave_up.
                    first_retry = Some((gate.finals(), attempts_before));
                }
                let delay = policy.delay(done.attempts, hint.after, &mut rand::rng());
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = deadline.reached() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            max_retry_after: Duration::from_millis(5),
        }
    }

    fn scripted(verdicts: Vec<Verdict>) -> impl FnMut() -> std::future::Ready<Attempt<u32>> {
        let n = Arc::new(AtomicU32::new(0));
        move || {
            let i = n.fetch_add(1, Ordering::SeqCst) as usize;
            let verdict = verdicts
                .get(i)
                .cloned()
                .unwrap_or(Verdict::Final(Outcome::Delivered));
            std::future::ready(Attempt::answered(i as u32, verdict))
        }
    }

    fn retry(r: &str) -> Verdict {
        Verdict::Retry(RetryHint::new(r))
    }
    fn fault(r: &str) -> Verdict {
        Verdict::Fault { reason: r.into() }
    }

    #[tokio::test]
    async fn retries_are_bounded_by_the_budget() {
        let gate = Gate::new("t", OnFault::Fail);
        let done = attempt_until_final(
            &policy(),
            &gate,
            Deadline::NONE,
            scripted(vec![retry("a"); 5]),
        )
        .await;
        assert_eq!(done.outcome, Outcome::GaveUp { reason: "a".into() });
        assert_eq!(done.attempts, 3);
        let done = attempt_until_final(
            &policy(),
            &gate,
            Deadline::NONE,
            scripted(vec![retry("a"); 2]),
        )
        .await;
        assert_eq!(
            (done.outcome, done.attempts, done.answer),
            (Outcome::Delivered, 3, Some(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_waits_at_the_gate_and_a_message_s_own_retries_give_up() {
        // Every attempt asked to retry and no send got a final answer meanwhile: the
        // endpoint's outage. The gate closes, the retries are given back, the probes go on
        // until an answer is final.
        let gate = Gate::new("t", OnFault::Wait);
        let mut health = gate.health();
        let script = vec![retry("ServiceUnavailable"); 5];
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, scripted(script)).await;
        assert_eq!((done.outcome, done.attempts), (Outcome::Delivered, 1));
        assert!(
            health.has_changed().unwrap(),
            "the gate closed, then opened"
        );
        assert!(health.borrow_and_update().is_up());

        // Alone and refused every time: not held for good. Its three attempts, then one
        // probe per give-back.
        let made = Arc::new(AtomicU32::new(0));
        let counted = made.clone();
        let forever = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Attempt::answered(0, retry("InternalServerError")))
        };
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, forever).await;
        assert_eq!(
            done.outcome,
            Outcome::GaveUp {
                reason: "InternalServerError".into()
            }
        );
        assert_eq!(made.load(Ordering::SeqCst), 3 + OUTAGE_PROBES);
        assert!(!gate.health().borrow().is_up(), "the endpoint still fails");
        gate.admit().await.answered();

        // The same retries while another send got a final answer, and the other messages'
        // first tries were judged lately (no partial outage): this message's own.
        for _ in 0..1_000 {
            gate.count_first_answer(false);
        }
        let other = gate.clone();
        let n = Arc::new(AtomicU32::new(0));
        let attempt = move || {
            let (other, i) = (other.clone(), n.fetch_add(1, Ordering::SeqCst));
            async move {
                if i == 1 {
                    other.admit().await.answered();
                }
                Attempt::answered(i, retry("TooManyRequests"))
            }
        };
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, attempt).await;
        assert_eq!(
            (done.outcome, done.attempts),
            (
                Outcome::GaveUp {
                    reason: "TooManyRequests".into()
                },
                3
            )
        );
        assert!(gate.health().borrow().is_up());
    }

    /// A backlog's first burst draws a few verdicts (dead tokens), then the endpoint answers
    /// 503 to everything: an outage all the same. Seen: the verdicts made every message's
    /// look back to its first retry see "final answers meanwhile", so the gate never closed and
    /// the backlog ended gave_up after 30 tries each.
    #[tokio::test(start_paused = true)]
    async fn verdicts_before_an_outage_do_not_hide_it() {
        let gate = Gate::new("t", OnFault::Wait);
        // Of the burst's first answers, nearly all asked to retry.
        for i in 0..1_000 {
            gate.count_first_answer(i >= 12);
        }
        let health = gate.health();
        let (other, n) = (gate.clone(), Arc::new(AtomicU32::new(0)));
        let attempt = move || {
            let (other, i) = (other.clone(), n.fetch_add(1, Ordering::SeqCst));
            async move {
                if i == 0 {
                    // A dead token's verdict, during this message's first round trip.
                    other.admit().await.answered();
                }
                let verdict = if i < 6 {
                    retry("ServiceUnavailable")
                } else {
                    Verdict::Final(Outcome::Delivered)
                };
                Attempt::answered(i, verdict)
            }
        };
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, attempt).await;
        assert_eq!(done.outcome, Outcome::Delivered);
        assert!(
            health.has_changed().unwrap(),
            "the gate closed for the outage (and opened)"
        );
        assert!(done.attempts < 3, "retries given back: {}", done.attempts);
    }

    /// Half the endpoint's answers are 503 while it judges the others: a message's run of
    /// three is the endpoint's bad luck, not the message's. Before, about an eighth of a
    /// backlog ended `gave_up` so (and was committed), and the gate never closed.
    #[tokio::test(start_paused = true)]
    async fn a_partial_outage_does_not_end_messages() {
        // Meanwhile, at each attempt, two other messages' first tries: one judged, one asked
        // to retry.
        let others = |gate: &Gate, then: fn(u32) -> Verdict| {
            let (other, n) = (gate.clone(), Arc::new(AtomicU32::new(0)));
            move || {
                let (other, i) = (other.clone(), n.fetch_add(1, Ordering::SeqCst));
                async move {
                    other.admit().await.answered();
                    other.count_first_answer(false);
                    other.count_first_answer(true);
                    Attempt::answered(i, then(i))
                }
            }
        };
        let gate = Gate::new("t", OnFault::Wait);
        let attempt = others(&gate, |i| {
            if i < 8 {
                retry("ServiceUnavailable")
            } else {
                Verdict::Final(Outcome::Delivered)
            }
        });
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, attempt).await;
        assert_eq!((done.outcome, done.attempts), (Outcome::Delivered, 9));
        assert!(
            gate.health().borrow().is_up(),
            "no outage: others were judged"
        );

        // A message the endpoint fails every time, beside others that fail half the time (at
        // worst, other such messages): explained while 0.5^n is over one in a million, so it
        // gives up after about 20 in a row, not never. (Its own first answer is in the rate too:
        // 2 of 3 at its first answer, about half after.)
        let gate = Gate::new("t", OnFault::Wait);
        for i in 0..100 {
            gate.count_first_answer(i % 2 == 0);
        }
        let done = attempt_until_final(
            &policy(),
            &gate,
            Deadline::NONE,
            others(&gate, |_| retry("InternalServerError")),
        )
        .await;
        assert!((19..=22).contains(&done.attempts), "{}", done.attempts);
        assert!(matches!(done.outcome, Outcome::GaveUp { .. }));
        // While the others' first tries are judged, it gives up at its budget.
        let gate = Gate::new("t", OnFault::Wait);
        let other = gate.clone();
        let judged = move || {
            let other = other.clone();
            async move {
                for _ in 0..100 {
                    other.admit().await.answered();
                    other.count_first_answer(false);
                }
                Attempt::answered(0, retry("InternalServerError"))
            }
        };
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, judged).await;
        assert_eq!(done.attempts, 3);

        // In `Fail` (`pusher send`, `bench`) the budget is the budget.
        let gate = Gate::new("t", OnFault::Fail);
        let attempt = others(&gate, |_| retry("ServiceUnavailable"));
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, attempt).await;
        assert_eq!(done.attempts, 3);
        assert!(matches!(done.outcome, Outcome::GaveUp { .. }));

        // Whatever the rate, at most MAX_UNLUCKY in a row (here 99 % of first tries fail:
        // 0.99^30 would explain it). The rate is of recent answers: halved past 2,048 so, it
        // follows the endpoint (a healthy history does not hide a brownout for long).
        use super::super::gate::MAX_UNLUCKY;
        let gate = Gate::new("t", OnFault::Wait);
        assert!(!gate.explains(1), "no answers, no rate");
        for i in 0..100 {
            gate.count_first_answer(i > 0);
        }
        assert!(gate.explains(MAX_UNLUCKY - 1));
        assert!(!gate.explains(MAX_UNLUCKY));
        let gate = Gate::new("t", OnFault::Wait);
        for _ in 0..100_000 {
            gate.count_first_answer(false);
        }
        for _ in 0..4_000 {
            gate.count_first_answer(true);
        }
        assert!(
            gate.explains(10),
            "0.5 or more of the recent first answers failed"
        );
    }

    fn refused() -> std::future::Ready<Attempt<u32>> {
        std::future::ready(Attempt::unsent(Outcome::Malformed {
            reason: "BadDeviceToken".into(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_refused_unsent_is_no_answer_of_the_endpoint() {
        let gate = Gate::new("t", OnFault::Wait);
        let malformed = Outcome::Malformed {
            reason: "BadDeviceToken".into(),
        };
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, refused).await;
        assert_eq!((&done.outcome, done.attempts), (&malformed, 0));
        assert_eq!(gate.finals(), 0, "not counted as the endpoint's answer");

        // During an outage, other pushes refused unsent do not hide it: the message's
        // retries meet no final answer, the gate closes, and its retries are given back.
        let health = gate.health();
        let other = gate.clone();
        let n = Arc::new(AtomicU32::new(0));
        let attempt = move || {
            let (other, i) = (other.clone(), n.fetch_add(1, Ordering::SeqCst));
            async move {
                if i < 3 {
                    let done =
                        attempt_until_final(&policy(), &other, Deadline::NONE, refused).await;
                    assert_eq!(done.attempts, 0);
                    Attempt::answered(i, retry("ServiceUnavailable"))
                } else {
                    Attempt::answered(i, Verdict::Final(Outcome::Delivered))
                }
            }
        };
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, attempt).await;
        assert_eq!((done.outcome, done.attempts), (Outcome::Delivered, 1));
        assert!(health.has_changed().unwrap(), "the gate closed");

        // A closed gate stays closed when a push is refused unsent, and the probe's turn
        // goes on to the next send.
        gate.admit().await.fault("ServiceUnavailable");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, refused).await;
        assert_eq!(done.outcome, malformed);
        assert!(!gate.health().borrow().is_up(), "the endpoint said nothing");
        assert!(gate.awaits_a_probe(), "the probe's turn was handed on");
    }

    #[tokio::test(start_paused = true)]
    async fn faults_wait_without_spending_the_budget() {
        let gate = Gate::new("t", OnFault::Wait);
        // Five faults in a row (the endpoint down for a while), then two retryable answers
        // (still no final one: the gate stays closed), then delivered: one attempt charged.
        let mut script = vec![fault("connect_error"); 5];
        script.extend([retry("a"), retry("b")]);
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, scripted(script)).await;
        assert_eq!(done.outcome, Outcome::Delivered);
        assert_eq!(done.attempts, 1);
        assert!(gate.health().borrow().is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_deadline_a_push_ends_expired_without_another_attempt() {
        use crate::clock::Clock;
        let now = crate::clock::SystemClock.now();
        let in_ms = |ms: u64| Deadline::from_push_expiry((now.as_millis() as u64 + ms) as i64, now);
        // The endpoint down: the push waits at the gate past its deadline.
        let gate = Gate::new("t", OnFault::Wait);
        let made = Arc::new(AtomicU32::new(0));
        let counted = made.clone();
        let down = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Attempt::<u32>::fault("connect_error", "refused".into()))
        };
        let started = Instant::now();
        let done = tokio::time::timeout(
            Duration::from_secs(60),
            attempt_until_final(&policy(), &gate, in_ms(1500), down),
        )
        .await
        .expect("ends at its deadline");
        assert_eq!(done.outcome, Outcome::Expired);
        // The first attempt and the probe after 1 s; ended at the deadline, not at a probe.
        assert_eq!(made.load(Ordering::SeqCst), 2);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(2));
        // Already past: not attempted at all, even at a closed gate.
        let done = attempt_until_final(&policy(), &gate, in_ms(0), scripted(vec![])).await;
        assert_eq!((done.outcome, done.attempts), (Outcome::Expired, 0));

        // Between retries: a `Retry-After` longer than the time left.
        let gate = Gate::new("t", OnFault::Wait);
        let slow = RetryPolicy {
            max_retry_after: Duration::from_secs(10),
            ..policy()
        };
        let later =
            Verdict::Retry(RetryHint::new("TooManyRequests").after(Some(Duration::from_secs(10))));
        let started = Instant::now();
        let done = attempt_until_final(&slow, &gate, in_ms(1000), scripted(vec![later])).await;
        assert_eq!((done.outcome, done.attempts), (Outcome::Expired, 1));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn in_fail_mode_a_fault_ends_the_push_with_its_cause() {
        let gate = Gate::new("t", OnFault::Fail);
        let attempt = || {
            std::future::ready(Attempt::<u32>::fault(
                "connect_error",
                "TLS: invalid peer certificate: UnknownIssuer".into(),
            ))
        };
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, attempt).await;
        assert_eq!(
            done.outcome,
            Outcome::GaveUp {
                reason: "connect_error".into()
            }
        );
        assert_eq!(
            done.endpoint_fault.as_deref(),
            Some("connect_error: TLS: invalid peer certificate: UnknownIssuer")
        );
        assert_eq!(done.attempts, 1);
    }

    #[tokio::test]
    async fn credentials_refused_after_a_renewal_are_a_fault() {
        let gate = Gate::new("t", OnFault::Fail);
        let renew = Verdict::Retry(RetryHint::new("UNAUTHENTICATED").renew_auth());
        let done = attempt_until_final(
            &policy(),
            &gate,
            Deadline::NONE,
            scripted(vec![renew.clone(), renew]),
        )
        .await;
        assert_eq!(done.endpoint_fault.as_deref(), Some("UNAUTHENTICATED"));
        // One renewal that works is a retry the message is not charged for: the stale
        // credentials were ours.
        let renew = Verdict::Retry(RetryHint::new("UNAUTHENTICATED").renew_auth());
        let done =
            attempt_until_final(&policy(), &gate, Deadline::NONE, scripted(vec![renew])).await;
        assert_eq!((done.outcome, done.attempts), (Outcome::Delivered, 1));
        // 503, 503, then stale credentials: renewed and sent a third time, not given up.
        let expired = Verdict::Retry(
            RetryHint::new("ExpiredProviderToken")
                .renew_auth()
                .reconnect(),
        );
        let script = vec![
            retry("ServiceUnavailable"),
            retry("ServiceUnavailable"),
            expired,
        ];
        let done = attempt_until_final(&policy(), &gate, Deadline::NONE, scripted(script)).await;
        assert_eq!((done.outcome, done.attempts), (Outcome::Delivered, 3));
    }
}

//! What bounds one process's requests, whoever sends them: the time a request body may take
//! to arrive, and the bytes of records being built and produced at once.

use super::error::ApiError;
use axum::body::{Body, Bytes, HttpBody};
use axum::BoxError;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A request body that fails once `timeout` has passed since its head was read: a client
/// that trickles its body (one byte every few seconds) cannot hold a connection, and the
/// request's task, for as long as it likes.
pub struct Deadline {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Deadline {
    pub fn new(inner: Body, timeout: Duration) -> Deadline {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub struct BodyTimeout(pub Duration);

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The deadline, when that is why `e` could not read a body.
pub fn body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(BodyTimeout(timeout)) = e.downcast_ref::<BodyTimeout>() {
            return Some(*timeout);
        }
        next = e.source();
    }
    None
}

/// The bytes of records this process may hold at once, built and waiting for Kafka (each
/// token's message is built whole, and librdkafka keeps a copy until it is acknowledged).
/// Without it, a hundred concurrent requests of 10,000 tokens with a 4 KB message each wanted
/// 8 GB.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<tokio::sync::Semaphore>,
    total: u32,
}

/// Bytes of budget held by one request's write, given back when it is dropped.
pub type Held = tokio::sync::OwnedSemaphorePermit;

impl Budget {
    /// `total` bytes, at most `u32::MAX` (what one permit can count).
    pub fn new(total: usize) -> Budget {
        let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
        Budget {
            bytes: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Takes `bytes` of the budget (a request wanting more than the whole takes the whole,
    /// alone), or refuses the request: 503 with Retry-After, nothing accepted.
    pub fn take(&self, bytes: usize) -> Result<Held, ApiError> {
        let wanted = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.bytes
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| ApiError::Unavailable {
                message: format!(
                    "this process holds its {} MB of records in flight (api.maxInFlightBytes); \
                     nothing was accepted: retry",
                    self.total / 1_000_000
                ),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_total_and_takes_back_what_is_dropped() {
        let budget = Budget::new(1000);
        let first = budget.take(600).unwrap();
        assert!(matches!(
            budget.take(600),
            Err(ApiError::Unavailable { .. })
        ));
        let second = budget.take(400).unwrap();
        drop(first);
        // More than the whole: the whole, once nothing else holds any.
        assert!(budget.take(5000).is_err());
        drop(second);
        let all = budget.take(5000).unwrap();
        assert_eq!(all.num_permits(), 1000);
    }
}

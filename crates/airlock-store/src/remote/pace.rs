//! Request pacing per registry: an optional requests-per-second budget (a token bucket with a
//! burst of one), and adaptive back-off when the registry answers `429`: every request to that
//! registry waits out `Retry-After`, and the pace slows until answers come back clean.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The slowest pace adaptive back-off goes down to.
const SLOWEST: Duration = Duration::from_secs(5);
/// The pace adaptive back-off starts from when no rate was configured.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Shared by every request to one registry.
pub struct Pacer {
    state: Mutex<State>,
}

struct State {
    /// The configured gap between requests (zero: unlimited).
    configured: Duration,
    /// The gap in force, at least `configured`; widened by 429s, narrowed by successes.
    current: Duration,
    /// When the next request may start.
    next: Instant,
}

impl Pacer {
    /// `requests_per_second`: `None` or non-positive for no limit.
    pub fn new(requests_per_second: Option<f64>) -> Self {
        let configured = match requests_per_second {
            Some(rate) if rate > 0.0 => Duration::from_secs_f64(1.0 / rate),
            _ => Duration::ZERO,
        };
        Pacer { state: Mutex::new(State { configured, current: configured, next: Instant::now() }) }
    }

    /// Waits for this request's turn.
    pub async fn wait(&self) {
        let slot = {
            let mut state = self.state.lock().expect("pacer lock");
            let now = Instant::now();
            if state.current.is_zero() && state.next <= now {
                return;
            }
            let slot = state.next.max(now);
            state.next = slot + state.current;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// A `429`: nobody sends before `retry_after` (or the current gap) has passed, and the pace
    /// halves.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let mut state = self.state.lock().expect("pacer lock");
        state.current = (state.current * 2).clamp(FIRST_BACKOFF, SLOWEST).max(state.configured);
        let resume = Instant::now() + retry_after.unwrap_or(state.current).min(Duration::from_secs(300));
        state.next = state.next.max(resume);
    }

    /// A request went through: the pace recovers a little toward the configured one.
    pub fn succeeded(&self) {
        let mut state = self.state.lock().expect("pacer lock");
        if state.current > state.configured {
            state.current = state.current.mul_f64(0.9).max(state.configured);
            if state.current < Duration::from_millis(1) {
                state.current = state.configured;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_requests() {
        let pacer = Pacer::new(Some(10.0));
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_everyone_back_then_recovers() {
        let pacer = Pacer::new(None);
        pacer.wait().await;
        pacer.throttled(Some(Duration::from_secs(2)));
        let start = Instant::now();
        pacer.wait().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        for _ in 0..100 {
            pacer.succeeded();
        }
        // Once recovered, ten requests cost at most the one gap still scheduled.
        let start = Instant::now();
        for _ in 0..10 {
            pacer.wait().await;
        }
        assert!(start.elapsed() <= Duration::from_millis(100), "{:?}", start.elapsed());
    }
}

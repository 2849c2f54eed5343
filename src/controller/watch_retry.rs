//! How each watch retries on its own, so one failing watch never pauses the
//! others.
//!
//! kube's Controller puts one backoff on the merged stream of all its
//! watches: an error from any watch stops every watch (and every reconcile
//! trigger) for the next delay, and the delay doubles with each error up to
//! 30 s plus as much again of jitter. After kube-apiserver restarts, each of
//! the seven watches fails in turn (connection refused, then 410 Gone), so
//! they came back one by one over minutes and a healthy canary missed its
//! progress deadline (docs/operating.md, "Faults on a real API server").
//! Here each watch backs off alone, and its errors are logged and dropped
//! before they reach the Controller.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use tracing::warn;

/// The first retry's delay.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// No watch waits longer than this between tries: with seven watches, at
/// most 1.4 requests per second reach an API server that is down.
pub const LONGEST_RETRY: Duration = Duration::from_secs(5);

/// One watch's delays between tries: doubling from [`FIRST_RETRY`] to
/// [`LONGEST_RETRY`], each a random point between half and all of its step
/// (watches that failed together do not retry together), and back to the
/// start once the watch got somewhere: two events since its last error.
///
/// One is not enough: kube's watcher starts every re-list with an `Init`
/// event before it sends the LIST, and kube's `StreamBackoff` resets on any
/// event, so a LIST that keeps failing (403, 429, 5xx, no connection) would
/// be retried after at most 0.25 s, again and again, by each watch. A list that gets through brings
/// at least `Init` and `InitDone`.
#[derive(Debug, Clone)]
pub struct WatchRetry {
    step: Duration,
    random: u64,
    events_since_error: u32,
}

impl Default for WatchRetry {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchRetry {
    pub fn new() -> Self {
        Self {
            step: FIRST_RETRY,
            // The standard library's per-instance random hash keys: enough
            // to spread retries, no dependency.
            random: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                | 1,
            events_since_error: 0,
        }
    }

    /// xorshift64: a new random number each try.
    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }
}

impl Iterator for WatchRetry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.events_since_error >= 2 {
            self.step = FIRST_RETRY;
        }
        self.events_since_error = 0;
        let step = self.step;
        self.step = (step * 2).min(LONGEST_RETRY);
        let half = step / 2;
        let extra_ms = self.next_random() % (half.as_millis() as u64 + 1);
        Some(half + Duration::from_millis(extra_ms))
    }
}

impl Backoff for WatchRetry {
    /// Called on every event; the delays start over at the next error only
    /// if the watch got somewhere (see [`WatchRetry`]).
    fn reset(&mut self) {
        self.events_since_error = self.events_since_error.saturating_add(1);
    }
}

/// Logs each error of the watch of `kind` and drops it, so it never reaches
/// the Controller's shared backoff; the watch's own [`WatchRetry`] (applied
/// before this) has already paced it.
pub fn errors_logged<S, K>(
    stream: S,
    kind: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    stream.filter_map(move |item| {
        std::future::ready(match item {
            Ok(object) => Some(Ok(object)),
            Err(error) => {
                warn!(watch = kind, %error, "watch failed; it retries on its own");
                None
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_each_between_half_and_all_of_its_step() {
        let mut retry = WatchRetry::new();
        let mut step = FIRST_RETRY;
        for _ in 0..12 {
            let delay = retry.next().unwrap();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
            step = (step * 2).min(LONGEST_RETRY);
        }
        assert_eq!(step, LONGEST_RETRY);
    }

    /// A watch that has failed often enough to wait its longest.
    fn retry_at_its_longest() -> WatchRetry {
        let mut retry = WatchRetry::new();
        for _ in 0..10 {
            retry.next();
        }
        retry
    }

    #[test]
    fn a_list_that_got_through_starts_the_delays_over() {
        let mut retry = retry_at_its_longest();
        retry.reset();
        retry.reset();
        assert!(retry.next().unwrap() <= FIRST_RETRY);
    }

    #[test]
    fn the_start_of_a_list_alone_does_not_start_the_delays_over() {
        let mut retry = retry_at_its_longest();
        retry.reset();
        assert!(retry.next().unwrap() >= LONGEST_RETRY / 2);
    }

    /// The watcher as it behaves when every LIST fails: `Init`, then the
    /// error, again and again. Paced by kube's own `StreamBackoff`, on a
    /// paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_list_that_keeps_failing_is_retried_ever_more_slowly() {
        use kube::runtime::WatchStreamExt;
        let mut items: Vec<Result<watcher::Event<u32>, watcher::Error>> = Vec::new();
        for _ in 0..8 {
            items.push(Ok(watcher::Event::Init));
            items.push(Err(watcher::Error::NoResourceVersion));
        }
        let start = tokio::time::Instant::now();
        let seen = futures::stream::iter(items)
            .backoff(WatchRetry::new())
            .count()
            .await;
        assert_eq!(seen, 16);
        // The delays between the eight errors: steps 0.25, 0.5, 1, 2, 4, 5,
        // 5 s, at least half of each (8.875 s). Reset by each `Init` they
        // would be at most 0.25 s each.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(8_875), "{waited:?}");
    }

    #[test]
    fn two_watches_failing_together_do_not_retry_in_step() {
        let (mut a, mut b) = (WatchRetry::new(), WatchRetry::new());
        let a: Vec<_> = (0..8).map(|_| a.next().unwrap()).collect();
        let b: Vec<_> = (0..8).map(|_| b.next().unwrap()).collect();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn errors_are_dropped_and_objects_kept() {
        let items: Vec<Result<u32, watcher::Error>> =
            vec![Ok(1), Err(watcher::Error::NoResourceVersion), Ok(2)];
        let kept: Vec<u32> = errors_logged(futures::stream::iter(items), "pods")
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(kept, vec![1, 2]);
    }
}

//! How a broken watch is retried. kube's default (0.8 s doubling to 30 s,
//! jitter up to twice that, reset only by a success) escalates through every
//! failure of an API server restart — refused connections, 503s while it
//! starts, the 410 that follows — so watches came back one by one up to
//! 150 s after the server did (tests/real_faults.rs), and rollouts stalled on
//! a stale view. One operator holds a handful of watches, so retrying each at
//! most every few seconds costs the server well under one request a second.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const FIRST: Duration = Duration::from_millis(250);
const LONGEST: Duration = Duration::from_secs(4);

/// Doubling from 250 ms to at most 4 s; a delivered event starts it over.
#[derive(Debug, Clone, Default)]
pub struct WatchBackoff {
    next: Option<Duration>,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next.unwrap_or(FIRST);
        self.next = Some((delay * 2).min(LONGEST));
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_four_seconds_and_a_success_starts_over() {
        let mut b = WatchBackoff::default();
        let first: Vec<u128> = (&mut b).take(7).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(FIRST));
    }
}

//! Readiness: every watch has listed once.

use super::*;

/// How often a replica that is not ready yet says which watch it waits for.
pub(super) const SYNC_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Tells when every watch of a controller has listed once. Not
/// `Store::wait_until_ready`: its one-shot channel keeps a single waker, so
/// waiting on it beside the Controller (which waits on the same store) can
/// leave one of the two asleep forever.
#[derive(Clone)]
pub(super) struct SyncTracker(Arc<Mutex<SyncState>>);

pub(super) struct SyncState {
    unsynced: Vec<&'static str>,
    on_synced: Option<Box<dyn FnOnce() + Send>>,
}

impl SyncTracker {
    pub(super) fn new<const N: usize>(
        kinds: [&'static str; N],
        on_synced: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self(Arc::new(Mutex::new(SyncState {
            unsynced: kinds.to_vec(),
            on_synced: Some(Box::new(on_synced)),
        })))
    }

    /// For `.inspect` on a reflector's stream: the end of its first list
    /// (the store holds it by then) marks `kind` synced.
    pub(super) fn marker<K, E>(
        &self,
        kind: &'static str,
    ) -> impl Fn(&Result<watcher::Event<K>, E>) + use<K, E> {
        let tracker = self.clone();
        move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                tracker.mark(kind);
            }
        }
    }

    pub(super) fn mark(&self, kind: &'static str) {
        let done = {
            let mut state = lock(&self.0);
            state.unsynced.retain(|k| *k != kind);
            if state.unsynced.is_empty() {
                state.on_synced.take()
            } else {
                None
            }
        };
        if let Some(done) = done {
            done();
        }
    }

    pub(super) fn unsynced(&self) -> Vec<&'static str> {
        lock(&self.0).unsynced.clone()
    }

    pub(super) fn all_synced(&self) -> bool {
        lock(&self.0).unsynced.is_empty()
    }

    /// A replica that stays unready says which watch it still waits for.
    pub(super) async fn report_while_unsynced(self) {
        let mut waited = Duration::ZERO;
        loop {
            tokio::time::sleep(SYNC_REPORT_EVERY).await;
            let unsynced = self.unsynced();
            if unsynced.is_empty() || Arc::strong_count(&self.0) == 1 {
                return;
            }
            waited += SYNC_REPORT_EVERY;
            warn!(
                waited_seconds = waited.as_secs(),
                ?unsynced,
                "still waiting for the watch caches to sync"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn synced_once_every_watch_listed_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let tracker = SyncTracker::new(["a", "b"], move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let a = tracker.marker::<Pod, watcher::Error>("a");
        let b = tracker.marker::<Pod, watcher::Error>("b");
        a(&Ok(watcher::Event::Init));
        a(&Ok(watcher::Event::InitDone));
        assert_eq!(tracker.unsynced(), ["b"]);
        b(&Ok(watcher::Event::InitApply(Pod::default())));
        assert_eq!(calls.load(Ordering::SeqCst), 0, "b is still listing");
        b(&Ok(watcher::Event::InitDone));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A re-list after a desync does not report readiness again.
        a(&Ok(watcher::Event::InitDone));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

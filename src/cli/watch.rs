//! Following one object with a kube watch (a list, then watch events,
//! relisting after an expired watch), reduced to what a command needs: the
//! object as it is now, or that it is gone.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, PartialEq)]
pub enum Change<K> {
    /// The object as it is now.
    Applied(K),
    Deleted,
}

/// One watcher event as a change of a single object. `listed` remembers
/// whether the object came up during the current (re)list: a relist that
/// ends without it means it was deleted while the watch was down.
pub fn change<K>(event: Event<K>, listed: &mut bool) -> Option<Change<K>> {
    match event {
        Event::Init => {
            *listed = false;
            None
        }
        Event::InitApply(object) => {
            *listed = true;
            Some(Change::Applied(object))
        }
        Event::InitDone => (!*listed).then_some(Change::Deleted),
        Event::Apply(object) => Some(Change::Applied(object)),
        Event::Delete(_) => Some(Change::Deleted),
    }
}

/// The changes of the object `name`, starting with its current state.
/// Watch errors are passed on; the watch retries them with backoff.
pub fn changes<K>(
    api: Api<K>,
    name: &str,
) -> impl Stream<Item = Result<Change<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut listed = false;
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let change = match event {
                Ok(event) => change(event, &mut listed).map(Ok),
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(change)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_without_the_object_means_it_was_deleted() {
        let mut listed = false;
        let events = [
            Event::Init,
            Event::InitApply(1),
            Event::InitDone,
            Event::Apply(2),
            Event::Init,
            Event::InitDone,
        ];
        let changes: Vec<_> = events
            .into_iter()
            .filter_map(|e| change(e, &mut listed))
            .collect();
        assert_eq!(
            changes,
            vec![Change::Applied(1), Change::Applied(2), Change::Deleted]
        );
    }

    #[test]
    fn a_delete_event_is_a_deletion() {
        let mut listed = true;
        assert_eq!(change(Event::Delete(3), &mut listed), Some(Change::Deleted));
        assert_eq!(change(Event::<i32>::Init, &mut listed), None);
        assert_eq!(
            change(Event::InitApply(4), &mut listed),
            Some(Change::Applied(4))
        );
        assert_eq!(change(Event::<i32>::InitDone, &mut listed), None);
    }
}

//! Whether the controller can see the cluster: each watch reports its outcomes here,
//! and `/readyz` fails while one of them cannot list or watch.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::watcher;

/// How long an error counts as current when nothing else is heard from the watch.
/// A watch that reconnects without a change to report says nothing, so its last
/// error fades after this long (twice the watcher's longest back-off).
pub const ERROR_FADES_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct WatchState {
    listed: bool,
    error: Option<(Instant, String)>,
}

/// The watches of the running reconciler, by name.
#[derive(Debug, Default)]
pub struct WatchHealth {
    watches: Mutex<BTreeMap<&'static str, WatchState>>,
}

impl WatchHealth {
    /// A watch about to start: not ready until its first list completes.
    pub fn starting(&self, watch: &'static str) {
        self.with(|watches| {
            watches.insert(watch, WatchState::default());
        });
    }

    /// The reconciler stopped (lost the Lease, or shutting down): no watches to judge.
    pub fn clear(&self) {
        self.with(BTreeMap::clear);
    }

    /// Records what one watch just yielded.
    pub fn observe<K>(
        &self,
        watch: &'static str,
        event: &Result<watcher::Event<K>, watcher::Error>,
    ) {
        self.with(|watches| {
            let state = watches.entry(watch).or_default();
            match event {
                Err(error) => state.error = Some((Instant::now(), error.to_string())),
                Ok(watcher::Event::InitDone) => {
                    state.listed = true;
                    state.error = None;
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => state.error = None,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            }
        });
    }

    /// Why the controller is not ready, if a watch has not listed yet or failed
    /// recently without recovering.
    pub fn problem(&self) -> Option<String> {
        self.problem_at(Instant::now())
    }

    fn problem_at(&self, now: Instant) -> Option<String> {
        let watches = self.watches.lock().ok()?;
        watches
            .iter()
            .find_map(|(watch, state)| match &state.error {
                Some((at, error)) if now.duration_since(*at) < ERROR_FADES_AFTER => {
                    Some(format!("watch of {watch} failing: {error}"))
                }
                _ if !state.listed => Some(format!("watch of {watch} has not listed yet")),
                _ => None,
            })
    }

    fn with(&self, change: impl FnOnce(&mut BTreeMap<&'static str, WatchState>)) {
        if let Ok(mut watches) = self.watches.lock() {
            change(&mut watches);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Result<watcher::Event<()>, watcher::Error> {
        Err(watcher::Error::NoResourceVersion)
    }

    #[test]
    fn ready_once_every_watch_listed_and_not_while_one_fails() {
        let health = WatchHealth::default();
        assert_eq!(health.problem(), None, "no reconciler, nothing to wait for");
        health.starting("canaries");
        health.starting("replicasets");
        assert!(health.problem().is_some_and(|p| p.contains("not listed")));
        health.observe::<()>("canaries", &Ok(watcher::Event::InitDone));
        health.observe::<()>("replicasets", &Ok(watcher::Event::InitDone));
        assert_eq!(health.problem(), None);

        health.observe("canaries", &failed());
        let problem = health.problem().unwrap_or_default();
        assert!(problem.contains("watch of canaries failing"), "{problem}");
        assert_eq!(
            health.problem_at(Instant::now() + ERROR_FADES_AFTER),
            None,
            "an error fades when the watch has nothing more to say"
        );
        health.observe("canaries", &Ok(watcher::Event::Apply(())));
        assert_eq!(health.problem(), None);

        health.clear();
        assert_eq!(health.problem(), None);
    }

    #[test]
    fn a_watch_that_never_lists_keeps_the_controller_unready() {
        let health = WatchHealth::default();
        health.starting("canaries");
        health.observe("canaries", &failed());
        assert!(
            health
                .problem_at(Instant::now() + ERROR_FADES_AFTER)
                .is_some_and(|p| p.contains("not listed")),
            "an error fades, but a list never completed still counts"
        );
    }
}

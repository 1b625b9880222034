//! The controller's memory of its own status writes until the watch shows them.
//!
//! A reconcile reads the Canary from the watch's store, which lags the API server
//! by the time an event takes to arrive. A reconcile that starts in that gap (a
//! ReplicaSet's event, a requeue) would see the status from before the last write:
//! the analysis looks due again, the step looks unfinished, and it would query
//! Prometheus, move the weight back and record the same transition's Events a
//! second time with different evidence. Such a read is put off until the watch
//! catches up; the status write's resourceVersion precondition refuses whatever
//! still slips through (another replica, a restarted controller).

use std::collections::HashMap;
use std::sync::Mutex;

/// The resourceVersion each Canary had when its last status write was planned,
/// kept until the store shows a newer one.
#[derive(Debug, Default)]
pub struct OwnWrites {
    planned_from: Mutex<HashMap<(String, String), String>>,
}

impl OwnWrites {
    /// Remembers a status write planned from `read` that the API server stored as
    /// `stored`. A write that changed nothing (the same version back) is forgotten:
    /// no event will come for it.
    pub fn wrote(&self, namespace: &str, name: &str, read: Option<&str>, stored: Option<&str>) {
        let Ok(mut planned_from) = self.planned_from.lock() else {
            return;
        };
        let key = (namespace.to_owned(), name.to_owned());
        match read {
            Some(read) if stored != Some(read) => {
                planned_from.insert(key, read.to_owned());
            }
            _ => {
                planned_from.remove(&key);
            }
        }
    }

    /// Whether the Canary read at `version` is the one a write of ours has
    /// already replaced. Any other version means the store has caught up (a write
    /// with a precondition is the very next version), and the memory goes.
    pub fn is_stale(&self, namespace: &str, name: &str, version: Option<&str>) -> bool {
        let Ok(mut planned_from) = self.planned_from.lock() else {
            return false;
        };
        let key = (namespace.to_owned(), name.to_owned());
        match planned_from.get(&key) {
            Some(read) if Some(read.as_str()) == version => true,
            Some(_) => {
                planned_from.remove(&key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_a_write_replaced_is_stale_until_the_store_moves_on() {
        let writes = OwnWrites::default();
        assert!(
            !writes.is_stale("demo", "web", Some("10")),
            "nothing written yet"
        );
        writes.wrote("demo", "web", Some("10"), Some("11"));
        assert!(writes.is_stale("demo", "web", Some("10")));
        assert!(writes.is_stale("demo", "web", Some("10")), "still behind");
        assert!(!writes.is_stale("demo", "other", Some("10")), "per Canary");
        assert!(!writes.is_stale("demo", "web", Some("11")), "caught up");
        assert!(
            !writes.is_stale("demo", "web", Some("10")),
            "once caught up, the memory is gone (a Canary recreated may reuse nothing)"
        );
    }

    #[test]
    fn a_write_that_changed_nothing_leaves_nothing_to_wait_for() {
        let writes = OwnWrites::default();
        writes.wrote("demo", "web", Some("10"), Some("11"));
        writes.wrote("demo", "web", Some("11"), Some("11"));
        assert!(!writes.is_stale("demo", "web", Some("11")));
        assert!(!writes.is_stale("demo", "web", Some("10")));
        writes.wrote("demo", "web", None, Some("12"));
        assert!(!writes.is_stale("demo", "web", None));
    }
}

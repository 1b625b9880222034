//! Why a revision's pods are not available, in their own words, so the Canary's
//! status and Events tell an operator what `kubectl describe pod` would. Pods are
//! read only for a canary short of available pods (one list, no cache): at ten
//! thousand Canaries, pods are the objects not to hold in memory.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;

/// How long a container may run without being Ready before that is worth saying:
/// less is an application starting up.
const NOT_READY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest message quoted from a container status.
const QUOTE: usize = 160;

/// Waiting reasons that are part of a normal start, not a failure.
const STARTING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// The first problem among `pods` (by name), and how many more pods have one.
pub fn failure(pods: &[Pod], now: Timestamp) -> Option<String> {
    let mut sorted: Vec<&Pod> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let problems: Vec<String> = sorted
        .iter()
        .filter_map(|pod| pod_problem(pod, now))
        .collect();
    let first = problems.first()?;
    Some(match problems.len() {
        1 => first.clone(),
        n => format!("{first} (and {} more pods)", n - 1),
    })
}

fn pod_problem(pod: &Pod, now: Timestamp) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unschedulable {
        return Some(format!(
            "pod {name}: Unschedulable: {}",
            quote(condition.message.as_deref().unwrap_or_default())
        ));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers
        .filter_map(|container| container_problem(container, now))
        .map(|problem| format!("pod {name}: {problem}"))
        .next()
}

fn container_problem(container: &ContainerStatus, now: Timestamp) -> Option<String> {
    let name = &container.name;
    let state = container.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().unwrap_or("Waiting");
        if STARTING.contains(&reason) {
            return None;
        }
        let said = waiting.message.as_deref().map(quote).unwrap_or_default();
        let last_exit = container
            .last_state
            .as_ref()
            .and_then(|last| last.terminated.as_ref())
            .map(|t| format!(" (last exit code {})", t.exit_code))
            .unwrap_or_default();
        return Some(if said.is_empty() {
            format!("container {name}: {reason}{last_exit}")
        } else {
            format!("container {name}: {reason}{last_exit}: {said}")
        });
    }
    if let Some(terminated) = &state.terminated
        && terminated.exit_code != 0
    {
        let reason = terminated.reason.as_deref().unwrap_or("Error");
        return Some(format!(
            "container {name}: {reason} (exit code {})",
            terminated.exit_code
        ));
    }
    let running = state.running.as_ref()?;
    let since = running.started_at.as_ref()?.0;
    let running_for = now.duration_since(since);
    let long = running_for.as_secs() >= NOT_READY_AFTER.as_secs() as i64;
    (!container.ready && long).then(|| {
        format!(
            "container {name}: running for {}s but not Ready (its readiness probe fails)",
            running_for.as_secs()
        )
    })
}

fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": status,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn now() -> Timestamp {
        "2026-11-22T10:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_crash_loop_is_named_with_its_exit_code() {
        let crashing = pod(
            "web-2-a",
            serde_json::json!({"containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=app"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}
            }]}),
        );
        assert_eq!(
            failure(&[crashing], now()).as_deref(),
            Some(
                "pod web-2-a: container app: CrashLoopBackOff (last exit code 1): back-off 40s restarting failed container=app"
            )
        );
    }

    #[test]
    fn a_missing_image_is_named_and_more_pods_are_counted() {
        let missing = |name: &str| {
            pod(
                name,
                serde_json::json!({"containerStatuses": [{
                    "name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                    "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "Container image \"web:404\" is not present with pull policy of Never"}}
                }]}),
            )
        };
        let said = failure(&[missing("web-2-b"), missing("web-2-a")], now()).unwrap_or_default();
        assert!(
            said.starts_with("pod web-2-a: container app: ErrImageNeverPull: Container image"),
            "{said}"
        );
        assert!(said.ends_with("(and 1 more pods)"), "{said}");
    }

    #[test]
    fn starting_pods_and_young_unready_ones_are_not_failures() {
        let creating = pod(
            "web-2-a",
            serde_json::json!({"containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}),
        );
        let young = pod(
            "web-2-b",
            serde_json::json!({"containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"running": {"startedAt": "2026-11-22T09:59:50Z"}}
            }]}),
        );
        assert_eq!(failure(&[creating, young], now()), None);
    }

    #[test]
    fn a_pod_that_never_becomes_ready_is_named_after_a_while() {
        let unready = pod(
            "web-2-a",
            serde_json::json!({"containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"running": {"startedAt": "2026-11-22T09:59:00Z"}}
            }]}),
        );
        assert_eq!(
            failure(&[unready], now()).as_deref(),
            Some(
                "pod web-2-a: container app: running for 60s but not Ready (its readiness probe fails)"
            )
        );
    }

    #[test]
    fn an_unschedulable_pod_says_why() {
        let pending = pod(
            "web-2-a",
            serde_json::json!({"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory."
            }]}),
        );
        assert_eq!(
            failure(&[pending], now()).as_deref(),
            Some("pod web-2-a: Unschedulable: 0/3 nodes are available: 3 Insufficient memory.")
        );
    }
}

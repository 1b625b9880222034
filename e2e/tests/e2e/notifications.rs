//! Notifications of transitions, received by a webhook receiver on loopback: the
//! bodies as each sink's format has them, URLs read from a Secret, a Secret
//! without the key refused, and a sink that is down never holding a rollout.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::Value;
use serin_api::Phase;
use serin_e2e::kubectl::Kubectl;
use serin_e2e::process::{eventually, free_port};
use serin_e2e::receiver::{Received, Receiver};

use crate::cluster;
use crate::rollout::{Rollout, message, phase};

const FAST_STEPS: &str = "  steps: [25, 50]\n  stepDuration: 3s\n  scaleDownDelay: 3s\n";

/// A Secret `hooks` in `namespace` with the given keys, and the RoleBinding an
/// operator makes so the controller may read it (as docs/operations.md says).
fn hooks_secret(kubectl: &Kubectl, namespace: &str, keys: &[(&str, String)]) -> Result<()> {
    let data = keys
        .iter()
        .map(|(key, value)| format!("  {key}: {value}\n"))
        .collect::<String>();
    kubectl.run_with_input(
        &["apply", "-n", namespace, "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: hooks}}\nstringData:\n{data}"
        )),
    )?;
    kubectl.run(&[
        "create",
        "rolebinding",
        "serin-notification-credentials",
        "-n",
        namespace,
        "--clusterrole=serin-notification-credentials",
        "--serviceaccount=serin-system:serin",
    ])?;
    Ok(())
}

/// The CloudEvents types received, in order.
fn types(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter_map(|r| r.body["type"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn each_sink_receives_the_transitions_in_its_format() -> Result<()> {
    let receiver = Receiver::start()?;
    let rollout = Rollout::prepare(cluster(), "notify", "web")?;
    hooks_secret(
        &rollout.kubectl,
        &rollout.namespace,
        &[
            ("slack", receiver.url("/slack")),
            ("teams", receiver.url("/teams")),
        ],
    )?;
    let sinks = format!(
        "  notifications:
  - {{name: events, format: CloudEvents, url: '{}'}}
  - {{name: chat, format: Slack, urlFrom: {{secretKeyRef: {{name: hooks, key: slack}}}}}}
  - {{name: channel, format: Teams, urlFrom: {{secretKeyRef: {{name: hooks, key: teams}}}}, reasons: [Promoted, AnalysisFailed, AbortedByUser]}}
",
        receiver.url("/events")
    );
    rollout.apply("web:1", &format!("{FAST_STEPS}{sinks}"))?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.roll_out("web:2")?;
    rollout.wait_promoted(Duration::from_secs(60))?;

    let namespace = &rollout.namespace;
    let events = eventually(
        "the promotion's CloudEvent",
        Duration::from_secs(20),
        || {
            let events = receiver.at("/events");
            Ok(types(&events)
                .contains(&"dev.serin.canary.Promoted".to_owned())
                .then_some(events))
        },
    )?;
    let seen = types(&events);
    let wanted = [
        "Initializing",
        "Healthy",
        "RolloutStarted",
        "StepAdvanced",
        "StepAdvanced",
        "Promoting",
        "Promoted",
    ]
    .map(|reason| format!("dev.serin.canary.{reason}"));
    // In order; a command or a second Healthy in between would not be wrong.
    let mut rest = seen.iter();
    for reason in &wanted {
        ensure!(
            rest.any(|seen| seen == reason),
            "{reason} missing or out of order in {seen:?}"
        );
    }
    for event in &events {
        ensure!(
            event.content_type == "application/cloudevents+json",
            "{event:?}"
        );
        let body = &event.body;
        ensure!(body["specversion"] == "1.0" && body["subject"] == format!("{namespace}/web"));
        ensure!(
            body["source"]
                == format!("/apis/serin.dev/v1alpha1/namespaces/{namespace}/canaries/web")
        );
        ensure!(body["id"].as_str().is_some_and(|id| id.len() == 32));
        ensure!(
            body["data"]["reason"]
                .as_str()
                .is_some_and(|r| body["type"] == format!("dev.serin.canary.{r}"))
        );
    }
    let ids: std::collections::BTreeSet<_> = events
        .iter()
        .filter_map(|e| e.body["id"].as_str())
        .collect();
    ensure!(ids.len() == events.len(), "a CloudEvents id repeated");
    let promoted = events
        .iter()
        .rev()
        .find(|e| e.body["type"] == "dev.serin.canary.Promoted")
        .map(|e| &e.body["data"])
        .cloned()
        .unwrap_or(Value::Null);
    ensure!(
        promoted["phase"] == "Healthy" && promoted["weight"] == 0 && promoted["step"] == 0,
        "{promoted}"
    );

    // Slack: every transition, through the URL in the Secret.
    let slack = receiver.at("/slack");
    ensure!(
        slack.len() >= wanted.len(),
        "{} Slack messages",
        slack.len()
    );
    let promoted_text = format!("Canary {namespace}/web: Promoted: revision");
    ensure!(
        slack.iter().any(|m| m.body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(&promoted_text))),
        "no Slack message {promoted_text:?}"
    );
    ensure!(
        slack
            .iter()
            .all(|m| m.body["blocks"][0]["type"] == "section")
    );

    // Teams: only the reasons it asked for, one promotion.
    let teams = receiver.at("/teams");
    ensure!(
        teams.len() == 1,
        "{} Teams messages: {teams:?}",
        teams.len()
    );
    let card = &teams[0].body["attachments"][0];
    ensure!(card["contentType"] == "application/vnd.microsoft.card.adaptive");
    ensure!(card["content"]["body"][0]["text"] == format!("Canary {namespace}/web: Promoted"));

    eprintln!("CloudEvents received, in order: {seen:?}");
    eprintln!(
        "the promotion as CloudEvents: {}",
        events
            .last()
            .map(|e| e.body.to_string())
            .unwrap_or_default()
    );
    eprintln!(
        "the promotion on Slack: {}",
        slack.last().map(|m| m.body.to_string()).unwrap_or_default()
    );
    eprintln!("the promotion on Teams: {}", teams[0].body);
    Ok(())
}

#[test]
fn a_secret_without_the_key_is_an_invalid_spec_and_nothing_is_made() -> Result<()> {
    let receiver = Receiver::start()?;
    let rollout = Rollout::prepare(cluster(), "notify-key", "web")?;
    hooks_secret(
        &rollout.kubectl,
        &rollout.namespace,
        &[("teams", receiver.url("/teams"))],
    )?;
    let sinks = "  notifications:\n  - {name: chat, format: Slack, urlFrom: {secretKeyRef: {name: hooks, key: slack}}}\n";
    rollout.apply("web:1", &format!("{FAST_STEPS}{sinks}"))?;
    let field = "spec.notifications[0].urlFrom.secretKeyRef.key: Secret";
    let refused = rollout.wait("InvalidSpec naming the key", Duration::from_secs(30), |c| {
        message(c, "InvalidSpec").contains(field)
    })?;
    let said = message(&refused, "InvalidSpec");
    ensure!(
        said.contains("has no key \"slack\" (its keys: [teams])"),
        "{said}"
    );
    ensure!(
        !said.contains("127.0.0.1"),
        "a URL from the Secret was shown: {said}"
    );
    ensure!(rollout.replica_set_count()? == 0, "a ReplicaSet was made");

    rollout.patch(
        "merge",
        r#"{"spec":{"notifications":[{"name":"chat","format":"Slack","urlFrom":{"secretKeyRef":{"name":"hooks","key":"teams"}}}]}}"#,
    )?;
    rollout.wait(
        "Healthy once the key is there",
        Duration::from_secs(60),
        |c| phase(c) == Some(Phase::Healthy),
    )?;
    eventually(
        "a message at the key's URL",
        Duration::from_secs(20),
        || Ok((!receiver.at("/teams").is_empty()).then_some(())),
    )
}

#[test]
fn a_sink_that_is_down_never_holds_a_rollout() -> Result<()> {
    // Nothing listens on this port: every POST is refused.
    let down = format!("http://127.0.0.1:{}/hook", free_port()?);
    let rollout = Rollout::prepare(cluster(), "notify-down", "web")?;
    let sinks =
        format!("  notifications:\n  - {{name: gone, format: CloudEvents, url: '{down}'}}\n");
    rollout.apply("web:1", &format!("{FAST_STEPS}{sinks}"))?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.roll_out("web:2")?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let failed = eventually(
        "dropped notifications counted and reported",
        Duration::from_secs(60),
        || {
            let metrics = rollout
                .controller
                .as_ref()
                .map(|c| c.metrics())
                .transpose()?;
            let failed = metrics.unwrap_or_default().lines().find_map(|line| {
                line.strip_prefix(
                    r#"serin_notifications_total{format="CloudEvents",result="failed"} "#,
                )
                .and_then(|n| n.parse::<u64>().ok())
            });
            let warned = rollout.events()?.iter().any(|e| e == "NotificationFailed");
            Ok(failed.filter(|n| *n >= 2 && warned))
        },
    )?;
    let note = rollout
        .event_objects()?
        .into_iter()
        .find(|e| e["reason"] == "NotificationFailed")
        .and_then(|e| e["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    ensure!(
        note.contains("to sink gone (CloudEvents) dropped: the sink could not be reached")
            && !note.contains("127.0.0.1"),
        "{note}"
    );
    eprintln!("a sink down: promoted twice, {failed} notifications dropped; the Event: {note}");
    Ok(())
}

/// The cluster's sinks, as the chart renders them from `notifications.sinks`.
fn cluster_sinks(kubectl: &Kubectl, namespace: &str, sinks: &str) -> Result<()> {
    kubectl.run_with_input(
        &["apply", "-n", namespace, "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: serin-notifications}}\ndata:\n  sinks.yaml: |\n{}",
            sinks.lines().map(|line| format!("    {line}\n")).collect::<String>()
        )),
    )?;
    Ok(())
}

#[test]
fn the_clusters_sinks_hear_of_every_canary_and_a_broken_config_holds_nothing() -> Result<()> {
    let receiver = Receiver::start()?;
    let kubectl = &cluster().kubectl;
    let config = cluster().namespace("notify-config")?;
    hooks_secret(kubectl, &config, &[("ops", receiver.url("/ops"))])?;
    cluster_sinks(
        kubectl,
        &config,
        "- name: ops\n  format: Slack\n  urlFrom: {secretKeyRef: {name: hooks, key: ops}}\n  reasons: [Promoted]\n",
    )?;
    let flag = format!("--notifications-config={config}/serin-notifications");
    let rollout = Rollout::prepare_with(cluster(), "notify-cluster", "web", &[flag])?;
    rollout.apply("web:1", FAST_STEPS)?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    rollout.roll_out("web:2")?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let promoted = format!("Canary {}/web: Promoted", rollout.namespace);
    let ops = eventually(
        "the promotion on the cluster's sink",
        Duration::from_secs(20),
        || {
            let ops = receiver.at("/ops");
            Ok((!ops.is_empty()).then_some(ops))
        },
    )?;
    ensure!(ops.len() == 1, "{} messages: {ops:?}", ops.len());
    ensure!(
        ops[0].body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(&promoted)),
        "{}",
        ops[0].body
    );

    // A broken ConfigMap (read again after 10 s) is a Warning Event naming the
    // field, and the rollout goes on.
    cluster_sinks(
        kubectl,
        &config,
        "- {name: ops, format: Slack, url: 'ftp://nowhere'}\n",
    )?;
    std::thread::sleep(Duration::from_secs(11));
    rollout.roll_out("web:3")?;
    rollout.wait_promoted(Duration::from_secs(60))?;
    let note = eventually(
        "the broken config reported",
        Duration::from_secs(20),
        || {
            Ok(rollout
                .event_objects()?
                .into_iter()
                .find(|e| e["reason"] == "NotificationFailed")
                .and_then(|e| e["message"].as_str().map(str::to_owned)))
        },
    )?;
    ensure!(
        note.contains(&format!("ConfigMap {config}/serin-notifications: sinks.yaml[0].url: must be an http:// or https:// URL")),
        "{note}"
    );
    ensure!(
        receiver.at("/ops").len() == 1,
        "sent through a broken config"
    );
    eprintln!("the cluster's sink received: {}", ops[0].body);
    eprintln!("a broken cluster config: {note}");
    Ok(())
}

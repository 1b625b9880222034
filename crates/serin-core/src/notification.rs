//! What a notification of a transition says, in each sink's format: pure, so every
//! body is a plain unit test and the shell only delivers it.
//!
//! A notification is one transition the state machine reported as an Event, with
//! where the rollout stood once the plan was made (phase, step, weight, revisions).

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use serin_api::{CanaryStatus, NotificationFormat, NotificationSink, Phase, Weight};
use sha2::{Digest, Sha256};

use crate::machine::{Event, EventType};

/// One transition of one Canary, as its sinks are told of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// The Canary's namespace.
    pub namespace: String,
    /// The Canary's name.
    pub name: String,
    /// The Event's reason, such as `Promoted` or `AnalysisFailed`.
    pub reason: &'static str,
    /// Warning (something went wrong) or Normal.
    pub kind: EventType,
    /// What happened, for people (the Event's note).
    pub message: String,
    /// The phase once the transition happened.
    pub phase: Option<Phase>,
    /// The step once the transition happened (0 outside a rollout).
    pub step: i32,
    /// The canary's share of requests then.
    pub weight: Weight,
    /// The revision serving as stable.
    pub stable_revision: Option<String>,
    /// The revision being rolled out, if any.
    pub canary_revision: Option<String>,
    /// When it happened.
    pub at: Timestamp,
}

impl Notice {
    /// The notice of `event`, with where the rollout stands in `status`.
    pub fn new(
        namespace: &str,
        name: &str,
        event: &Event,
        status: &CanaryStatus,
        at: Timestamp,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            reason: event.reason,
            kind: event.kind,
            message: event.note.clone(),
            phase: status.phase,
            step: status.step,
            weight: status.weight,
            stable_revision: status.stable_revision.clone(),
            canary_revision: status.canary_revision.clone(),
            at,
        }
    }

    /// The same for the same transition at the same moment, so a receiver can drop
    /// a repeated delivery (CloudEvents' `id`).
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.namespace.as_str(),
            self.name.as_str(),
            self.reason,
            self.message.as_str(),
            &self.at.to_string(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.finalize()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// `namespace/name`.
    fn canary(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// One line for a chat: "Canary shop/web: Promoted".
    fn title(&self) -> String {
        let mark = match self.kind {
            EventType::Warning => "⚠️ ",
            EventType::Normal => "",
        };
        format!("{mark}Canary {}: {}", self.canary(), self.reason)
    }

    /// Where the rollout stands, as (label, value) pairs for people.
    fn facts(&self) -> Vec<(&'static str, String)> {
        let mut facts = vec![
            (
                "Phase",
                self.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            ),
            ("Step", self.step.to_string()),
            ("Weight", format!("{}%", self.weight)),
        ];
        if let Some(stable) = &self.stable_revision {
            facts.push(("Stable", stable.clone()));
        }
        if let Some(canary) = &self.canary_revision {
            facts.push(("Canary", canary.clone()));
        }
        facts
    }
}

/// Whether `sink` asked to hear of transitions with `reason`.
pub fn wanted(sink: &NotificationSink, reason: &str) -> bool {
    sink.reasons.is_empty() || sink.reasons.iter().any(|r| r == reason)
}

/// The `Content-Type` a body of `format` is sent with.
pub fn content_type(format: NotificationFormat) -> &'static str {
    match format {
        NotificationFormat::CloudEvents => "application/cloudevents+json",
        NotificationFormat::Slack | NotificationFormat::Teams => "application/json",
    }
}

/// The body of `notice` in `format`.
pub fn body(format: NotificationFormat, notice: &Notice) -> Value {
    match format {
        NotificationFormat::CloudEvents => cloud_event(notice),
        NotificationFormat::Slack => slack(notice),
        NotificationFormat::Teams => teams(notice),
    }
}

/// A CloudEvents 1.0 event in structured JSON mode. The type is
/// `dev.serin.canary.<reason>` so a receiver can route on it without reading data.
fn cloud_event(notice: &Notice) -> Value {
    json!({
        "specversion": "1.0",
        "id": notice.id(),
        "source": format!("/apis/serin.dev/v1alpha1/namespaces/{}/canaries/{}", notice.namespace, notice.name),
        "type": format!("dev.serin.canary.{}", notice.reason),
        "subject": notice.canary(),
        "time": notice.at.to_string(),
        "datacontenttype": "application/json",
        "data": {
            "namespace": notice.namespace,
            "name": notice.name,
            "reason": notice.reason,
            "type": notice.kind.as_str(),
            "message": notice.message,
            "phase": notice.phase,
            "step": notice.step,
            "weight": notice.weight,
            "stableRevision": notice.stable_revision,
            "canaryRevision": notice.canary_revision,
        },
    })
}

/// A Slack incoming webhook's message: `text` for notifications and clients
/// without blocks, and blocks with the message and where the rollout stands.
fn slack(notice: &Notice) -> Value {
    let facts = notice
        .facts()
        .into_iter()
        .map(|(label, value)| json!({"type": "mrkdwn", "text": format!("*{label}:* {value}")}))
        .collect::<Vec<_>>();
    json!({
        "text": format!("{}: {}", notice.title(), notice.message),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*\n{}", notice.title(), notice.message)}},
            {"type": "context", "elements": facts},
        ],
    })
}

/// A Teams Workflows webhook's message ("Send webhook alerts to a channel"): one
/// Adaptive Card with the message and a fact set.
fn teams(notice: &Notice) -> Value {
    let facts = notice
        .facts()
        .into_iter()
        .map(|(label, value)| json!({"title": label, "value": value}))
        .collect::<Vec<_>>();
    let color = match notice.kind {
        EventType::Warning => "Attention",
        EventType::Normal => "Default",
    };
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": notice.title(), "weight": "Bolder", "size": "Medium", "color": color, "wrap": true},
                    {"type": "TextBlock", "text": notice.message, "wrap": true},
                    {"type": "FactSet", "facts": facts},
                ],
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: EventType, reason: &'static str) -> Notice {
        let status = CanaryStatus {
            phase: Some(Phase::Aborted),
            step: 2,
            weight: Weight::from_percent(25),
            stable_revision: Some("aaaa".into()),
            canary_revision: Some("bbbb".into()),
            ..CanaryStatus::default()
        };
        let event = Event {
            kind,
            reason,
            note: "rollout of bbbb aborted at step 2: errors 3.1x stable's".into(),
        };
        let at = Timestamp::from_second(1_800_000_000).unwrap_or_else(|e| panic!("{e}"));
        Notice::new("shop", "web", &event, &status, at)
    }

    #[test]
    fn a_cloud_event_has_the_required_attributes_and_the_rollout_in_data() {
        let body = body(
            NotificationFormat::CloudEvents,
            &notice(EventType::Warning, "AnalysisFailed"),
        );
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["type"], "dev.serin.canary.AnalysisFailed");
        assert_eq!(
            body["source"],
            "/apis/serin.dev/v1alpha1/namespaces/shop/canaries/web"
        );
        assert_eq!(body["subject"], "shop/web");
        assert_eq!(body["time"], "2027-01-15T08:00:00Z");
        assert_eq!(body["id"].as_str().map(str::len), Some(32));
        let data = &body["data"];
        assert_eq!(
            (
                &data["reason"],
                &data["type"],
                &data["phase"],
                &data["step"]
            ),
            (
                &json!("AnalysisFailed"),
                &json!("Warning"),
                &json!("Aborted"),
                &json!(2)
            )
        );
        assert_eq!(
            (&data["weight"], &data["canaryRevision"]),
            (&json!(25), &json!("bbbb"))
        );
    }

    #[test]
    fn the_id_is_the_same_for_the_same_transition_and_differs_between_two() {
        let one = notice(EventType::Warning, "AnalysisFailed");
        assert_eq!(one.id(), one.clone().id());
        let other = Notice {
            at: one.at + k8s_openapi::jiff::SignedDuration::from_secs(1),
            ..one.clone()
        };
        assert_ne!(one.id(), other.id());
        assert_ne!(one.id(), notice(EventType::Normal, "Promoted").id());
    }

    #[test]
    fn a_slack_message_has_text_and_blocks_naming_the_canary_and_reason() {
        let body = body(
            NotificationFormat::Slack,
            &notice(EventType::Normal, "Promoted"),
        );
        let text = body["text"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("Canary shop/web: Promoted: rollout of bbbb"),
            "{text}"
        );
        assert_eq!(body["blocks"][0]["type"], "section");
        let facts = body["blocks"][1]["elements"].to_string();
        assert!(
            facts.contains("*Weight:* 25%") && facts.contains("*Canary:* bbbb"),
            "{facts}"
        );
    }

    #[test]
    fn a_teams_message_is_one_adaptive_card_with_a_fact_set() {
        let body = body(
            NotificationFormat::Teams,
            &notice(EventType::Warning, "AnalysisFailed"),
        );
        assert_eq!(body["type"], "message");
        let attachment = &body["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachment["content"];
        assert_eq!(
            (&card["type"], &card["version"]),
            (&json!("AdaptiveCard"), &json!("1.4"))
        );
        assert_eq!(
            card["body"][0]["text"],
            "⚠️ Canary shop/web: AnalysisFailed"
        );
        assert_eq!(card["body"][0]["color"], "Attention");
        assert_eq!(
            card["body"][2]["facts"][0],
            json!({"title": "Phase", "value": "Aborted"})
        );
    }

    #[test]
    fn a_sink_hears_every_reason_unless_it_names_some() {
        let mut sink: NotificationSink = serde_json::from_value(
            json!({"name": "chat", "format": "Slack", "url": "http://127.0.0.1/"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(wanted(&sink, "StepAdvanced"));
        sink.reasons = vec!["Promoted".into()];
        assert!(wanted(&sink, "Promoted") && !wanted(&sink, "StepAdvanced"));
    }
}

//! Calls the gates of `spec.gates`: the checks the status says are due, asked
//! during the reconcile, and the hooks the plan set calling, called once their
//! status is stored.
//!
//! A hook is called at most once: the plan that decides to call it records it
//! as `Calling`, the call starts only once that status is written, and its
//! answer is kept here until a reconcile records it. A controller that finds a
//! hook `Calling` that it did not call (the one before it stopped mid-call)
//! reports it lost instead of calling again. Each call carries an
//! `Idempotency-Key` that is the same for every call of one gate at one step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serin_api::{Canary, CanaryStatus, Gate, GateState, GateStatus};
use serin_core::gate::{self, GateAnswer, GateOutcome};
use tracing::{info, warn};

/// The first wait between two tries of a call; each next one doubles.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What a receiver says back, at most, in a status message.
const SAID_AT_MOST: usize = 200;

/// The gate calls of every Canary, and the hooks' answers not yet recorded.
pub struct GateCaller {
    http: reqwest::Client,
    /// By call key: None while the call is under way, then its outcome.
    hooks: Mutex<HashMap<String, Option<GateOutcome>>>,
}

impl Default for GateCaller {
    fn default() -> Self {
        Self {
            http: reqwest::Client::builder().build().unwrap_or_default(),
            hooks: Mutex::new(HashMap::new()),
        }
    }
}

impl GateCaller {
    /// Asks the checks that are due, and collects what came of the hooks being
    /// called, for the state machine.
    pub async fn answers(
        &self,
        canary: &Canary,
        namespace: &str,
        name: &str,
        status: &CanaryStatus,
        now: Timestamp,
    ) -> Vec<GateAnswer> {
        let spec = &canary.spec;
        let mut answers = Vec::new();
        for record in gate::checks_due(spec, status, now) {
            let Some(gate) = gate::gate_of(spec, record) else {
                continue;
            };
            let body = gate::body(namespace, name, gate, record, status);
            let key = gate::call_key(namespace, name, record);
            let outcome = call(&self.http, gate, &body, &key, Retry::Check).await;
            info!(gate = %gate.name, step = record.step, ?outcome, "gate asked");
            answers.push(answer(record, outcome));
        }
        let Ok(hooks) = self.hooks.lock() else {
            return answers;
        };
        for record in status
            .gates
            .iter()
            .filter(|record| record.state == GateState::Calling)
        {
            let key = gate::call_key(namespace, name, record);
            match hooks.get(&key) {
                Some(None) => {}
                Some(Some(outcome)) => answers.push(answer(record, outcome.clone())),
                None => answers.push(answer(record, GateOutcome::Lost)),
            }
        }
        answers
    }

    /// Forgets the answers a stored status now records.
    pub fn recorded(&self, namespace: &str, name: &str, status: &CanaryStatus) {
        if let Ok(mut hooks) = self.hooks.lock() {
            for record in status
                .gates
                .iter()
                .filter(|record| record.state != GateState::Calling)
            {
                hooks.remove(&gate::call_key(namespace, name, record));
            }
        }
    }

    /// Calls the hooks that `after` (just stored) sets calling and `before` did
    /// not, each in a task of its own; never waits.
    pub fn call_hooks(
        self: &Arc<Self>,
        canary: &Canary,
        namespace: &str,
        name: &str,
        before: &CanaryStatus,
        after: &CanaryStatus,
    ) {
        for record in gate::hooks_to_call(before, after) {
            let Some(gate) = gate::gate_of(&canary.spec, record) else {
                continue;
            };
            let key = gate::call_key(namespace, name, record);
            let body = gate::body(namespace, name, gate, record, after);
            if let Ok(mut hooks) = self.hooks.lock() {
                hooks.insert(key.clone(), None);
            }
            let caller = Arc::clone(self);
            let gate = gate.clone();
            tokio::spawn(async move {
                let outcome = call(&caller.http, &gate, &body, &key, Retry::Hook).await;
                info!(gate = %gate.name, ?outcome, "hook called");
                if let Ok(mut hooks) = caller.hooks.lock() {
                    hooks.insert(key, Some(outcome));
                }
            });
        }
    }
}

fn answer(record: &GateStatus, outcome: GateOutcome) -> GateAnswer {
    GateAnswer {
        name: record.name.clone(),
        revision: record.revision.clone(),
        step: record.step,
        outcome,
    }
}

/// When a call is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// A check asks whether to go on: tried again when it could not connect, got
    /// no answer in time, or a 429, 502, 503 or 504.
    Check,
    /// A hook does something: tried again only when it could not connect, so a
    /// request that may have arrived is never sent twice.
    Hook,
}

/// POSTs `body` to the gate's URL with its timeout, trying again as `retry` and
/// `gate.retries` allow; what came of it, in words for the status.
async fn call(
    http: &reqwest::Client,
    gate: &Gate,
    body: &serde_json::Value,
    key: &str,
    retry: Retry,
) -> GateOutcome {
    let Some(url) = &gate.url else {
        return GateOutcome::Refused("no url to call".to_owned());
    };
    let timeout = Duration::from(gate.timeout);
    let mut wait = FIRST_RETRY;
    let mut tries = 0;
    loop {
        tries += 1;
        let sent = http
            .post(url)
            .timeout(timeout)
            .header("Idempotency-Key", key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let (outcome, again) = match sent {
            Ok(answer) => {
                let status = answer.status();
                let said: String = answer
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(SAID_AT_MOST)
                    .collect();
                let said = said.trim();
                let words = if said.is_empty() {
                    format!("answered {status}")
                } else {
                    format!("answered {status}: {said}")
                };
                if status.is_success() {
                    (GateOutcome::Passed(words), false)
                } else {
                    let busy = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                    (GateOutcome::Refused(words), busy && retry == Retry::Check)
                }
            }
            Err(error) if error.is_connect() => {
                (GateOutcome::Refused("could not connect".to_owned()), true)
            }
            Err(error) if error.is_timeout() => (
                GateOutcome::Refused(format!("no answer within {}s", timeout.as_secs_f64())),
                retry == Retry::Check,
            ),
            Err(error) => (
                GateOutcome::Refused(format!("the call failed: {}", error.without_url())),
                false,
            ),
        };
        if !again || tries > gate.retries {
            if tries > 1 && !matches!(outcome, GateOutcome::Passed(_)) {
                warn!(gate = %gate.name, tries, "gate call failed every try");
            }
            return match outcome {
                GateOutcome::Refused(why) if tries > 1 => {
                    GateOutcome::Refused(format!("{why} ({tries} tries)"))
                }
                outcome => outcome,
            };
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

//! Optional webhook notifications of rollout transitions, as Slack-compatible
//! JSON (`text` plus the same facts as fields). The address comes from the
//! operator's configuration only. Delivery happens on a background task behind
//! a bounded queue: a slow, failing or unreachable receiver is logged and never
//! holds up a reconcile, and a full queue drops the newest message.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::warn;

use crate::api::{EventKind, TransitionEvent};
use crate::rollout::{DRIFT_DETECTED, ROLLED_BACK};

/// Event reasons worth a message; the rest stay in Events only.
const FORWARDED: [&str; 8] = [
    "RolloutStarted",
    "StepCompleted",
    "Promoted",
    ROLLED_BACK,
    "ABTestDecided",
    "GuardBreach",
    "AnalysisInconclusive",
    DRIFT_DETECTED,
];

/// Messages waiting for delivery; beyond this the newest are dropped.
const QUEUE: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per message, a second apart: a receiver restarting is not an outage.
const TRIES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// One line for chat: what happened to which ModelDeployment.
    pub text: String,
    pub namespace: String,
    pub name: String,
    pub reason: String,
    pub message: String,
    /// `info` or `warning`, for routing.
    pub severity: &'static str,
    /// The version the event is about (the canary's, or the stable's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Notification {
    pub fn new(
        namespace: &str,
        name: &str,
        reason: &str,
        message: &str,
        warning: bool,
        version: Option<&str>,
    ) -> Self {
        let mark = if warning { ":warning: " } else { "" };
        Self {
            text: format!("{mark}ModelDeployment {namespace}/{name}: {reason}: {message}"),
            namespace: namespace.into(),
            name: name.into(),
            reason: reason.into(),
            message: message.into(),
            severity: if warning { "warning" } else { "info" },
            version: version.map(String::from),
        }
    }
}

/// The message for one event of a transition, if its reason deserves one.
pub fn for_event(
    namespace: &str,
    name: &str,
    version: Option<&str>,
    event: &TransitionEvent,
) -> Option<Notification> {
    FORWARDED.contains(&event.reason.as_str()).then(|| {
        Notification::new(
            namespace,
            name,
            &event.reason,
            &event.message,
            event.kind == EventKind::Warning,
            version,
        )
    })
}

/// Hands messages to the delivery task; cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct Notifier {
    queue: mpsc::Sender<Notification>,
}

impl Notifier {
    /// Starts the delivery task on the current runtime.
    pub fn start(url: &str) -> Result<Self, String> {
        // The URL is the secret of most webhooks: never in a message or a log.
        let url =
            reqwest::Url::parse(url).map_err(|e| format!("the webhook URL does not parse: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the webhook URL's scheme is {:?}; only http and https are supported",
                url.scheme()
            ));
        }
        let client = crate::http_client_builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let (queue, mut inbox) = mpsc::channel::<Notification>(QUEUE);
        tokio::spawn(async move {
            while let Some(n) = inbox.recv().await {
                deliver(&client, &url, &n).await;
            }
        });
        Ok(Self { queue })
    }

    pub fn send(&self, n: Notification) {
        if let Err(e) = self.queue.try_send(n) {
            warn!(error = %e, "webhook queue full or closed; dropping a notification");
        }
    }
}

async fn deliver(client: &reqwest::Client, url: &reqwest::Url, n: &Notification) {
    for attempt in 1..=TRIES {
        let outcome = client.post(url.clone()).json(n).send().await;
        let problem = match outcome {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.without_url().to_string(),
        };
        if attempt == TRIES {
            warn!(reason = %n.reason, name = %n.name, error = %problem, "webhook notification not delivered");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transitions_are_forwarded_as_slack_text_with_fields() {
        let events = [
            TransitionEvent {
                kind: EventKind::Normal,
                reason: "Deployed".into(),
                message: "nothing to announce".into(),
            },
            TransitionEvent {
                kind: EventKind::Warning,
                reason: ROLLED_BACK.into(),
                message: "check errors failed: 0.05 > 0.01".into(),
            },
        ];
        let sent: Vec<Notification> = events
            .iter()
            .filter_map(|e| for_event("risk", "scorer", Some("2.0.0"), e))
            .collect();
        assert_eq!(sent.len(), 1);
        let json = serde_json::to_value(&sent[0]).unwrap();
        assert_eq!(
            json["text"],
            ":warning: ModelDeployment risk/scorer: RolledBack: check errors failed: 0.05 > 0.01"
        );
        assert_eq!(json["severity"], "warning");
        assert_eq!(json["reason"], "RolledBack");
        assert_eq!(json["version"], "2.0.0");
        assert_eq!(json["namespace"], "risk");
    }

    #[tokio::test]
    async fn only_web_addresses_are_accepted_and_never_echoed() {
        let e = Notifier::start("file:///etc/passwd").unwrap_err();
        assert!(!e.contains("passwd"), "{e}");
        let e = Notifier::start("hooks.slack.com/services/T0/B0/secret").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(Notifier::start("https://hooks.example.com/T000/B000").is_ok());
    }
}

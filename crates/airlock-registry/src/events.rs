//! Event notifications: manifest pushes and deletes, POSTed to configured webhooks in the
//! distribution registry's notification format, in order per endpoint, retried with backoff.
//!
//! A handler never waits for a webhook: events go into a bounded queue per endpoint; when a
//! queue is full the event is dropped and logged, so a dead endpoint cannot stall pushes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_store::remote::redact_url;
use serde::Deserialize;
use tokio::sync::mpsc;

/// The media type of a notification body.
pub const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
const QUEUE: usize = 1024;

/// A webhook as written in `serve.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where to POST.
    pub url: String,
    /// Attempts per event (default 5).
    pub attempts: Option<u32>,
    /// Seconds per attempt (default 5).
    pub timeout: Option<u64>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Event {
    /// `push` or `delete`.
    pub action: &'static str,
    /// The repository.
    pub repository: String,
    /// The manifest's digest, when known.
    pub digest: Option<String>,
    /// Its media type, when known.
    pub media_type: Option<String>,
    /// Its size, when known.
    pub size: Option<u64>,
    /// The tag pushed or deleted, if any.
    pub tag: Option<String>,
    /// The user, when authenticated.
    pub actor: Option<String>,
}

/// The queues to every endpoint.
pub struct Notifier {
    queues: Vec<mpsc::Sender<Event>>,
}

impl Notifier {
    /// Starts one delivery task per endpoint.
    pub fn start(endpoints: &[Endpoint]) -> Notifier {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(airlock_store::remote::tls::client_config(Vec::new()))
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client");
        let queues = endpoints
            .iter()
            .map(|endpoint| {
                let (sender, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(client.clone(), endpoint.clone(), receiver));
                sender
            })
            .collect();
        Notifier { queues }
    }

    /// Queues an event for every endpoint; never waits.
    pub fn publish(&self, event: Event) {
        for queue in &self.queues {
            if queue.try_send(event.clone()).is_err() {
                tracing::warn!(repository = %event.repository, action = event.action, "notification queue full; event dropped");
            }
        }
    }
}

async fn deliver(client: reqwest::Client, endpoint: Endpoint, mut events: mpsc::Receiver<Event>) {
    let attempts = endpoint.attempts.unwrap_or(5).max(1);
    let timeout = Duration::from_secs(endpoint.timeout.unwrap_or(5));
    while let Some(event) = events.recv().await {
        let body = envelope(&event).to_string();
        for attempt in 1..=attempts {
            let sent = client.post(&endpoint.url).header("content-type", EVENTS_MEDIA_TYPE).timeout(timeout).body(body.clone()).send().await;
            match sent {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => tracing::debug!(url = %redact_url(&endpoint.url), status = %response.status(), attempt, "webhook refused an event"),
                Err(error) => tracing::debug!(url = %redact_url(&endpoint.url), error = %error.without_url(), attempt, "webhook unreachable"),
            }
            if attempt == attempts {
                tracing::warn!(url = %redact_url(&endpoint.url), repository = %event.repository, "event not delivered after {attempts} attempts");
            } else {
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt - 1)).min(Duration::from_secs(10))).await;
            }
        }
    }
}

/// `{"events": [ … ]}` as distribution writes it.
fn envelope(event: &Event) -> serde_json::Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut target = serde_json::json!({"repository": event.repository});
    if let Some(digest) = &event.digest {
        target["digest"] = digest.clone().into();
    }
    if let Some(media_type) = &event.media_type {
        target["mediaType"] = media_type.clone().into();
    }
    if let Some(size) = event.size {
        target["size"] = size.into();
        target["length"] = size.into();
    }
    if let Some(tag) = &event.tag {
        target["tag"] = tag.clone().into();
    }
    serde_json::json!({"events": [{
        "id": format!("{:x}-{:x}", now.as_nanos(), std::process::id()),
        "timestamp": format!("{}", now.as_secs()),
        "action": event.action,
        "target": target,
        "actor": {"name": event.actor.clone().unwrap_or_default()},
        "source": {"instanceID": format!("airlock-{}", std::process::id())},
    }]})
}

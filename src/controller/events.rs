//! The events step: one Kubernetes Event (`events.k8s.io/v1`) per condition
//! that changed, created as it is. Not kube's `Recorder`: to count repeats
//! as a series it keeps every Event of the last six minutes in memory,
//! which after 500 PBXs were created at once held 4.4 MB (heaptrack, the
//! scale benchmark's run); the operator publishes only on a condition's
//! change, which seldom repeats within minutes.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use time::OffsetDateTime;

/// Who reports the Events, and where they go.
pub struct Publisher {
    client: Client,
    reporter: Reporter,
}

/// Who reports an Event: the controller, and its instance (this pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// `reportingController`.
    pub controller: String,
    /// `reportingInstance`.
    pub instance: String,
}

/// An Event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something went as it should.
    Normal,
    /// Something the user should look at.
    Warning,
}

impl Publisher {
    /// Events reported by `controller` (`instance`: this pod, when known).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: controller.into(),
                instance: instance.unwrap_or_else(|| controller.into()),
            },
        }
    }

    /// Creates one Event about condition `about` of `regarding`, at `now`.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        about: &str,
        kind: Kind,
        reason: &str,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<(), kube::Error> {
        let event = event(regarding, about, kind, reason, note, &self.reporter, now)
            .map_err(kube::Error::SerdeError)?;
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        Api::<Event>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}

/// The Event itself: named after the object and the time in nanoseconds
/// (as kube and client-go name theirs) and the condition it is about, since
/// one reconcile's changes share one `now`; its note cut to the API's 1 kB.
pub fn event(
    regarding: &ObjectReference,
    about: &str,
    kind: Kind,
    reason: &str,
    note: &str,
    reporter: &Reporter,
    now: OffsetDateTime,
) -> Result<Event, serde_json::Error> {
    let Reporter {
        controller,
        instance,
    } = reporter;
    let at = crate::certs::rfc3339(now);
    let note: String = note.chars().take(1000).collect();
    let about: String = about
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(63)
        .collect();
    let suffix = format!(".{:x}.{about}", now.unix_timestamp_nanos());
    // A name is at most 253 characters; the suffix is what keeps it unique.
    let object: String = regarding
        .name
        .as_deref()
        .unwrap_or(controller)
        .chars()
        .take(253 - suffix.len())
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{object}{suffix}"),
            "namespace": regarding.namespace,
        },
        "eventTime": at,
        "action": "Reconcile",
        "reason": reason,
        "note": note,
        "type": match kind {
            Kind::Normal => "Normal",
            Kind::Warning => "Warning",
        },
        "regarding": regarding,
        "reportingController": controller,
        "reportingInstance": instance,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_object_and_reporter_and_keeps_the_note_short() {
        let regarding = ObjectReference {
            api_version: Some("pbx.webrtc.io/v1alpha1".into()),
            kind: Some("WebRtcPbx".into()),
            name: Some("acme".into()),
            namespace: Some("voice".into()),
            uid: Some("u1".into()),
            ..ObjectReference::default()
        };
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_780_000_000_123_456_789).unwrap();
        let e = event(
            &regarding,
            "Ready",
            Kind::Warning,
            "NotReady",
            &"x".repeat(5000),
            &Reporter {
                controller: "webrtc-pbx-operator".into(),
                instance: "pod-a".into(),
            },
            now,
        )
        .unwrap();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["metadata"]["name"], "acme.18b3d491bb8dcd15.ready");
        assert_eq!(v["metadata"]["namespace"], "voice");
        assert_eq!(v["type"], "Warning");
        assert_eq!(v["reason"], "NotReady");
        assert_eq!(v["regarding"]["uid"], "u1");
        assert_eq!(v["reportingController"], "webrtc-pbx-operator");
        assert_eq!(v["reportingInstance"], "pod-a");
        assert_eq!(v["note"].as_str().unwrap().len(), 1000);
        assert!(v["eventTime"].as_str().unwrap().starts_with("2026-05-28T"));
    }

    #[test]
    fn the_events_of_one_reconcile_have_distinct_names_of_at_most_253_characters() {
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_780_000_000_123_456_789).unwrap();
        let name = |object: &str, about: &str| {
            let regarding = ObjectReference {
                name: Some(object.into()),
                namespace: Some("voice".into()),
                ..ObjectReference::default()
            };
            let reporter = Reporter {
                controller: "c".into(),
                instance: "i".into(),
            };
            let e = event(&regarding, about, Kind::Normal, "R", "n", &reporter, now).unwrap();
            e.metadata.name.unwrap()
        };
        // Several conditions flip in one reconcile, which has one `now`.
        assert_ne!(name("acme", "ConfigRendered"), name("acme", "Ready"));
        let long = name(&"a".repeat(253), "WorkloadReady");
        assert_eq!(long.len(), 253);
        assert!(long.ends_with(".18b3d491bb8dcd15.workloadready"));
    }
}

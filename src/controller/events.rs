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
    controller: String,
    instance: String,
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
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
        }
    }

    /// Creates one Event about `regarding`, at `now`.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        kind: Kind,
        reason: &str,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<(), kube::Error> {
        let event = event(
            regarding,
            kind,
            reason,
            note,
            &self.controller,
            &self.instance,
            now,
        )
        .map_err(kube::Error::SerdeError)?;
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        Api::<Event>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}

/// The Event itself: named after the object and the time in nanoseconds
/// (as kube and client-go name theirs), its note cut to the API's 1 kB.
pub fn event(
    regarding: &ObjectReference,
    kind: Kind,
    reason: &str,
    note: &str,
    controller: &str,
    instance: &str,
    now: OffsetDateTime,
) -> Result<Event, serde_json::Error> {
    let at = crate::certs::rfc3339(now);
    let note: String = note.chars().take(1000).collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(controller),
                now.unix_timestamp_nanos()
            ),
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
            Kind::Warning,
            "NotReady",
            &"x".repeat(5000),
            "webrtc-pbx-operator",
            "pod-a",
            now,
        )
        .unwrap();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["metadata"]["name"], "acme.18b3d491bb8dcd15");
        assert_eq!(v["metadata"]["namespace"], "voice");
        assert_eq!(v["type"], "Warning");
        assert_eq!(v["reason"], "NotReady");
        assert_eq!(v["regarding"]["uid"], "u1");
        assert_eq!(v["reportingController"], "webrtc-pbx-operator");
        assert_eq!(v["reportingInstance"], "pod-a");
        assert_eq!(v["note"].as_str().unwrap().len(), 1000);
        assert!(v["eventTime"].as_str().unwrap().starts_with("2026-05-28T"));
    }
}

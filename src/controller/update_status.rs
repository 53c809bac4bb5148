//! The update-status step: the verdicts summarized into conditions, the
//! condition gauges, and the status patch and Events, sent only when
//! something other than a timestamp changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use time::OffsetDateTime;
use tracing::warn;

use super::{Context, Error};
use crate::api::{WebRtcPbx, WebRtcPbxStatus};
use crate::names::FIELD_MANAGER;
use crate::status::{self, Blocking, Verdict};

/// Writes `new_status` (its conditions computed here from `components`)
/// and the Events of what changed since `previous`.
pub(super) async fn update_status(
    ctx: &Context,
    pbx: &WebRtcPbx,
    previous: &WebRtcPbxStatus,
    new_status: &mut WebRtcPbxStatus,
    components: Vec<(Verdict, Blocking)>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let ns = pbx.namespace().unwrap_or_default();
    let name = pbx.name_any();
    let client = &ctx.client;
    let verdicts = status::summarize(components);
    let now_time =
        Time(k8s_openapi::jiff::Timestamp::from_second(now.unix_timestamp()).unwrap_or_default());
    new_status.conditions = status::conditions(
        &verdicts,
        &previous.conditions,
        pbx.metadata.generation,
        &now_time,
    );
    ctx.metrics.set_conditions(
        &ns,
        &name,
        new_status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str())),
    );
    if !status::same_ignoring_time(previous, new_status) {
        let api = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
        let patch = json!({"apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx", "status": new_status});
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::UpdateStatus)?;
        for c in status::events(&previous.conditions, &new_status.conditions) {
            let event = Event {
                type_: if c.status == "False" {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(
                    format!("{} is {}: {}", c.type_, c.status, c.message)
                        .chars()
                        .take(1000)
                        .collect(),
                ),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &pbx.object_ref(&())).await {
                warn!(error = %e, "cannot publish event");
            }
        }
    }
    Ok(())
}

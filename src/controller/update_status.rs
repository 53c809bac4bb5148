//! The update-status step: what the earlier steps and the probes found
//! made into the status, the verdicts summarized into conditions, the
//! condition gauges, and the status patch and Events, sent only when
//! something other than a timestamp changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use time::OffsetDateTime;
use tracing::warn;

use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

use super::{Context, Error, Run, events, probes};
use crate::api::{CertificateStatus, EndpointsStatus, ProbeFigures, WebRtcPbx, WebRtcPbxStatus};
use crate::certs;
use crate::names::FIELD_MANAGER;
use crate::status::{self, Blocking, Tri, Verdict, types};
use crate::validate;

/// How often a PBX whose pod is not ready is looked at again.
const WORKLOAD_RECHECK: Duration = Duration::from_secs(10);

/// Writes the status the earlier steps' `outcome` and the probes make (the
/// conditions computed here) and the Events of what changed. Returns when
/// to look again.
pub(super) async fn update_status(
    ctx: &Context,
    pbx: &WebRtcPbx,
    mut outcome: Outcome,
    now: OffsetDateTime,
) -> Result<Option<Duration>, Error> {
    let ns = pbx.namespace().unwrap_or_default();
    let name = pbx.name_any();
    let client = &ctx.client;
    let previous = &pbx.status.clone().unwrap_or_default();
    let mut new_status = WebRtcPbxStatus {
        observed_generation: pbx.metadata.generation,
        probes: previous.probes.clone(),
        endpoints: outcome.endpoints.take(),
        certificate: outcome.certificate.take(),
        ..WebRtcPbxStatus::default()
    };
    let probed = probe_conditions(pbx, &outcome, previous, ctx.flap_threshold);
    if let Some(figures) = probed.figures {
        new_status.probes = figures;
    }
    let mut components = outcome.components;
    components.extend(probed.components);
    // A pod the scheduler cannot place changes nothing the controller
    // watches: look again while the workload is not ready.
    let mut recheck = outcome.recheck;
    if components
        .iter()
        .any(|(v, _)| v.type_ == types::WORKLOAD_READY && v.status != Tri::True)
    {
        recheck = Some(recheck.map_or(WORKLOAD_RECHECK, |r| r.min(WORKLOAD_RECHECK)));
    }
    let mut verdicts = status::summarize(components);
    if outcome.rollout_queued {
        verdicts = status::rollout_queued(verdicts, ctx.rollouts.limit());
    }
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
    if !status::same_ignoring_time(previous, &new_status) {
        let api = Api::<WebRtcPbx>::namespaced(client.clone(), &ns);
        let patch = json!({"apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx", "status": new_status});
        let written = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::UpdateStatus)?;
        if let (Some(base), Some(written)) = (
            pbx.metadata.resource_version.as_deref(),
            written.metadata.resource_version.as_deref(),
        ) {
            ctx.status_writes.record(&ns, &name, base, written, now);
        }
        for c in status::events(&previous.conditions, &new_status.conditions) {
            let kind = if c.status == "False" {
                events::Kind::Warning
            } else {
                events::Kind::Normal
            };
            let note = format!("{} is {}: {}", c.type_, c.status, c.message);
            let regarding = pbx.object_ref(&());
            if let Err(e) = ctx
                .events
                .publish(&regarding, &c.type_, kind, &c.reason, &note, now)
                .await
            {
                warn!(error = %e, "cannot publish event");
            }
        }
    }
    Ok(recheck)
}

/// What the steps up to the apply found, for the status step.
pub(super) struct Outcome {
    /// ConfigRendered, CertificateReady and WorkloadReady.
    pub(super) components: Vec<(Verdict, Blocking)>,
    pub(super) endpoints: Option<EndpointsStatus>,
    pub(super) certificate: Option<CertificateStatus>,
    /// When to look again (a certificate coming due).
    pub(super) recheck: Option<Duration>,
    /// What the PBX's probe schedule found so far.
    pub(super) probe_results: Option<probes::Results>,
    /// The pod is not ready: why checks without a result wait.
    pub(super) awaiting: Option<status::Awaiting>,
    /// Why the probe may not dial the PBX's connect address.
    pub(super) connect_denied: Option<String>,
    /// A refused child's message: the reconcile fails once status says so.
    pub(super) rejection: Option<String>,
    /// A new pod template waits for the rollout budget.
    pub(super) rollout_queued: bool,
}

impl Outcome {
    /// An invalid spec keeps what runs and the running probe schedule; the
    /// status tells the user what to change, and the controller waits.
    pub(super) fn invalid(
        problems: &[validate::Problem],
        workload: (Verdict, Blocking),
        run: &Run,
        pbx: &WebRtcPbx,
    ) -> Self {
        Self::kept(
            vec![
                status::config_invalid(problems),
                status::certificate_pending(),
                workload,
            ],
            run,
            pbx,
        )
    }

    pub(super) fn kept(components: Vec<(Verdict, Blocking)>, run: &Run, pbx: &WebRtcPbx) -> Self {
        Self {
            components,
            endpoints: None,
            certificate: None,
            recheck: None,
            probe_results: run.ctx.prober.current(&ObjectRef::from_obj(pbx)),
            awaiting: None,
            connect_denied: None,
            rejection: None,
            rollout_queued: false,
        }
    }
}

/// The probe conditions, and the figures for `status.probes`
/// (`Some(None)`: clear them; `None`: keep what status has).
struct ProbeConditions {
    components: Vec<(Verdict, Blocking)>,
    figures: Option<Option<ProbeFigures>>,
}

fn probe_conditions(
    pbx: &WebRtcPbx,
    outcome: &Outcome,
    previous: &WebRtcPbxStatus,
    flap_threshold: u32,
) -> ProbeConditions {
    if let Some(why) = &outcome.connect_denied {
        // Not dialled at all: the probe conditions say why.
        return ProbeConditions {
            components: vec![status::connect_not_allowed(why.clone())],
            figures: None,
        };
    }
    if !pbx.spec.probes.enabled {
        return ProbeConditions {
            components: Vec::new(),
            figures: Some(None),
        };
    }
    let r = outcome.probe_results.as_ref();
    let components = status::probe_verdicts(
        &pbx.spec.probes,
        [
            r.and_then(|r| r.wss.as_ref()),
            r.and_then(|r| r.register.as_ref()),
            r.and_then(|r| r.echo.as_ref()),
            r.and_then(|r| r.user_call.as_ref()),
        ],
        outcome.awaiting,
        &previous.conditions,
        flap_threshold,
    );
    let figures = r
        .and_then(|r| r.last.as_ref())
        .map(|(report, at)| Some(status::probe_figures(report, certs::rfc3339(*at))));
    ProbeConditions {
        components,
        figures,
    }
}

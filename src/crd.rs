//! The generated CustomResourceDefinition (`webrtc-pbx-operator crd`); the
//! committed `crds/` file is this output, kept equal by a test.

use kube::CustomResourceExt;

use crate::api::WebRtcPbx;

/// Path of the committed CRD, relative to the repository root.
pub const CRD_PATH: &str = "crds/webrtcpbxes.pbx.webrtc.io.yaml";

/// The CRD as YAML.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let crd = serde_json::to_value(WebRtcPbx::crd()).unwrap_or_default();
    serde_saphyr::to_string(&crd)
}

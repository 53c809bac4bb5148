//! Creating WebRtcPbx objects as untyped JSON, so a test can send what
//! the typed API would not let it write, and read the apiserver's answer.

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

pub fn resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "pbx.webrtc.io",
        "v1alpha1",
        "WebRtcPbx",
    ))
}

/// Merges `patch` into a valid base spec (objects merge, other values replace;
/// `null` removes a key).
pub fn spec_with(patch: Value) -> Value {
    let mut base = json!({"domain": "pbx.example.com", "users": [{"extension": "1001"}]});
    merge(&mut base, patch);
    base
}

pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

pub async fn create(
    api: &Api<DynamicObject>,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, String> {
    let mut obj = DynamicObject::new(name, &resource());
    obj.data = json!({"spec": spec});
    api.create(&PostParams::default(), &obj)
        .await
        .map_err(|e| e.to_string())
}

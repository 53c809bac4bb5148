//! The one PBX fixture builder: every test (and the benchmark) that makes a
//! `WebRtcPbx` starts from [`Pbx`], as typed object, as untyped JSON (what
//! the typed API would not let a test write), or created on the apiserver.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use webrtc_pbx_operator::api::WebRtcPbx;

/// A `WebRtcPbx` a test is building.
#[derive(Debug, Clone)]
pub struct Pbx {
    name: String,
    spec: Value,
}

impl Pbx {
    /// PBX `name` with `spec` exactly as given.
    pub fn new(name: &str, spec: Value) -> Self {
        Self {
            name: name.into(),
            spec,
        }
    }

    /// PBX `name` with the smallest valid spec (`pbx.example.com`, user
    /// 1001) and `patch` merged in ([`merge`]).
    pub fn valid_with(name: &str, patch: Value) -> Self {
        Self::new(name, valid_spec(patch))
    }

    /// `deploy/examples/minimal` as a user would apply it, with `probes` as
    /// its spec.probes; also returns the users' Secret it ships with.
    pub fn minimal_example(probes: Value) -> (Self, Secret) {
        let path = crate::repo().join("deploy/examples/minimal/pbx.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap().clone();
        let pbx = find("WebRtcPbx");
        let name = pbx["metadata"]["name"].as_str().unwrap().to_string();
        let mut spec = pbx["spec"].clone();
        spec["probes"] = probes;
        (
            Self::new(&name, spec),
            serde_json::from_value(find("Secret")).unwrap(),
        )
    }

    /// In Service mode on a 4-port RTP range: no host ports, so tests
    /// running at the same time on the shared fake nodes cannot block each
    /// other.
    pub fn off_host(mut self) -> Self {
        self.spec["network"] = json!({"mode": "Service"});
        self.spec["rtp"] = json!({"portRange": {"start": 20000, "end": 20003}});
        self
    }

    /// Probes off: nothing serves the PBX (the fake nodes run no pods).
    pub fn probes_off(mut self) -> Self {
        self.spec["probes"] = json!({"enabled": false});
        self
    }

    /// Probes off unless the spec sets `probes` itself.
    pub fn probes_off_unless_set(self) -> Self {
        if self.spec.get("probes").is_some() {
            self
        } else {
            self.probes_off()
        }
    }

    /// [`Pbx::off_host`] and [`Pbx::probes_off`]: many PBXs, nothing to probe.
    pub fn quiet(self) -> Self {
        self.off_host().probes_off()
    }

    /// `patch` merged into the spec ([`merge`]).
    pub fn merged(mut self, patch: Value) -> Self {
        merge(&mut self.spec, patch);
        self
    }

    /// The PBX's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec as built so far.
    pub fn spec(&self) -> &Value {
        &self.spec
    }

    /// The whole manifest, untyped.
    pub fn json(&self) -> Value {
        json!({"apiVersion": "pbx.webrtc.io/v1alpha1", "kind": "WebRtcPbx",
               "metadata": {"name": self.name}, "spec": self.spec})
    }

    /// The manifest with `metadata.namespace` set.
    pub fn json_in(&self, ns: &str) -> Value {
        let mut manifest = self.json();
        manifest["metadata"]["namespace"] = json!(ns);
        manifest
    }

    /// The typed object (panics when the spec does not fit the API's types).
    pub fn typed(&self) -> WebRtcPbx {
        serde_json::from_value(self.json()).unwrap()
    }

    /// Creates the PBX in `ns` (panics when the apiserver refuses it).
    pub async fn create(&self, client: &Client, ns: &str) -> WebRtcPbx {
        Api::<WebRtcPbx>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &self.typed())
            .await
            .unwrap_or_else(|e| panic!("create WebRtcPbx {}: {e}", self.name))
    }

    /// Applies the PBX in `ns` (server-side apply, forced).
    pub async fn apply(&self, client: &Client, ns: &str) {
        crate::apply_json::<WebRtcPbx>(client, ns, self.json()).await
    }

    /// Creates the PBX untyped through `api` ([`untyped_api`]), returning
    /// the apiserver's refusal as text.
    pub async fn try_create_untyped(
        &self,
        api: &Api<DynamicObject>,
    ) -> Result<DynamicObject, String> {
        let mut obj = DynamicObject::new(&self.name, &resource());
        obj.data = json!({"spec": self.spec});
        api.create(&PostParams::default(), &obj)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The smallest valid spec with `patch` merged in.
pub fn valid_spec(patch: Value) -> Value {
    let mut base = json!({"domain": "pbx.example.com", "users": [{"extension": "1001"}]});
    merge(&mut base, patch);
    base
}

/// Merges `patch` into `base`: objects merge, other values replace, `null`
/// removes a key (JSON merge patch).
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

/// The WebRtcPbx resource, for untyped access.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "pbx.webrtc.io",
        "v1alpha1",
        "WebRtcPbx",
    ))
}

/// An untyped WebRtcPbx API in `ns`.
pub fn untyped_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource())
}

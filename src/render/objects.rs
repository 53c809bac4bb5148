//! Builds the Kubernetes objects of a validated PBX from its rendered
//! configuration: Secret, ConfigMap, (cert-manager Certificate), Services and
//! the StatefulSet, in the order they must be applied.
//!
//! Over 600 lines because the StatefulSet's pod template (probes, volumes,
//! security contexts, host network) is most of it; every builder here is a
//! plain struct literal checked by the golden files, with nothing to share.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, ExecAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::asterisk::{AsteriskConfig, ETC_DIR, KEYS_DIR, RESTART_FILES, RUNTIME_DIR, SECRETS_DIR};
use crate::api::{NetworkMode, ServiceType, TlsMode, TrafficPolicy};
use crate::names::*;
use crate::validate::{Generated, METRICS_USERNAME, ValidatedPbx};

/// UID and GID Asterisk runs as in the image (see deploy/images/asterisk).
pub const ASTERISK_UID: i64 = 1000;

/// One desired child object.
// A few of these exist per PBX: their size does not matter, boxing would.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// Secret (credentials and secret-bearing config).
    Secret(Secret),
    /// ConfigMap (config without secrets).
    ConfigMap(ConfigMap),
    /// cert-manager Certificate.
    Certificate(DynamicObject),
    /// prometheus-operator PodMonitor of the PBX's Asterisk metrics.
    PodMonitor(DynamicObject),
    /// Service (WSS or RTP).
    Service(Service),
    /// The Asterisk StatefulSet.
    StatefulSet(StatefulSet),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Secret(_) => "Secret",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Certificate(_) => "Certificate",
            Object::PodMonitor(_) => "PodMonitor",
            Object::Service(_) => "Service",
            Object::StatefulSet(_) => "StatefulSet",
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Certificate(o) | Object::PodMonitor(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::StatefulSet(o) => &o.metadata,
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// Kind and name, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// The object as JSON (apiVersion and kind included).
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Object::Secret(o) => serde_json::to_value(o),
            Object::ConfigMap(o) => serde_json::to_value(o),
            Object::Certificate(o) | Object::PodMonitor(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::StatefulSet(o) => serde_json::to_value(o),
        };
        // Serializing these plain data types cannot fail.
        value.unwrap_or(serde_json::Value::Null)
    }
}

fn metadata(pbx: &ValidatedPbx, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(pbx.namespace.clone()),
        labels: Some(labels(&pbx.name)),
        owner_references: pbx.uid.as_ref().map(|uid| {
            vec![OwnerReference {
                api_version: format!("{}/v1alpha1", crate::api::GROUP),
                kind: "WebRtcPbx".into(),
                name: pbx.name.clone(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        }),
        ..ObjectMeta::default()
    }
}

/// Builds every child object, in apply order: Secrets and ConfigMaps before
/// what mounts them.
pub fn build(pbx: &ValidatedPbx, config: &AsteriskConfig) -> Vec<Object> {
    let mut objects = vec![
        Object::Secret(secret(pbx, config)),
        Object::Secret(clients_secret(pbx)),
        Object::ConfigMap(config_map(pbx, config)),
    ];
    if pbx.spec.tls.mode == TlsMode::CertManager {
        objects.push(Object::Certificate(certificate(pbx)));
    }
    objects.push(Object::Service(wss_service(pbx)));
    if pbx.spec.network.mode == NetworkMode::Service {
        objects.push(Object::Service(rtp_service(pbx)));
    }
    objects.push(Object::StatefulSet(stateful_set(pbx, config)));
    objects
}

fn secret(pbx: &ValidatedPbx, config: &AsteriskConfig) -> Secret {
    let mut data: BTreeMap<String, ByteString> = config
        .secret_files
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    // The operator's own memory of what it generated: read back next time so
    // passwords stay stable across reconciles and restarts.
    for user in pbx.users.iter().filter(|u| u.generated_password) {
        data.insert(
            password_key(&user.extension),
            ByteString(user.password.clone().into_bytes()),
        );
    }
    data.insert(
        PROBE_PASSWORD_KEY.into(),
        ByteString(pbx.probe_password.clone().into_bytes()),
    );
    data.insert(
        METRICS_PASSWORD_KEY.into(),
        ByteString(pbx.metrics_password.clone().into_bytes()),
    );
    if let Some(password) = &pbx.callee_password {
        data.insert(
            CALLEE_PASSWORD_KEY.into(),
            ByteString(password.clone().into_bytes()),
        );
    }
    data.insert(
        METRICS_USERNAME_KEY.into(),
        ByteString(METRICS_USERNAME.as_bytes().to_vec()),
    );
    Secret {
        metadata: metadata(pbx, secret_name(&pbx.name)),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// What each user's softphone needs (crate::clients), for `client-config`.
fn clients_secret(pbx: &ValidatedPbx) -> Secret {
    let data = crate::clients::secret_data(pbx);
    let data: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    secret_of(pbx, clients_secret_name(&pbx.name), "Opaque", &data)
}

/// Reads back the generated passwords from the operator's Secret.
pub fn generated_from_secret(secret: Option<&Secret>) -> Generated {
    let mut generated = Generated::default();
    let Some(data) = secret.and_then(|s| s.data.as_ref()) else {
        return generated;
    };
    for (key, value) in data {
        let Ok(text) = String::from_utf8(value.0.clone()) else {
            continue;
        };
        if key == PROBE_PASSWORD_KEY {
            generated.probe_password = text;
        } else if key == METRICS_PASSWORD_KEY {
            generated.metrics_password = text;
        } else if key == CALLEE_PASSWORD_KEY {
            generated.callee_password = text;
        } else if let Some(encoded) = key.strip_prefix(USER_PASSWORD_KEY_PREFIX) {
            generated
                .user_passwords
                .insert(extension_of_key(encoded), text);
        }
    }
    generated
}

fn config_map(pbx: &ValidatedPbx, config: &AsteriskConfig) -> ConfigMap {
    ConfigMap {
        metadata: metadata(pbx, config_map_name(&pbx.name)),
        data: Some(config.files.clone()),
        ..ConfigMap::default()
    }
}

fn certificate(pbx: &ValidatedPbx) -> DynamicObject {
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
    let dns_names = crate::certs::server_names(&pbx.spec.domain, &pbx.spec.tls.extra_dns_names);
    let issuer = pbx.spec.tls.issuer_ref.as_ref();
    let mut object =
        DynamicObject::new(&pbx.tls_secret_name, &ApiResource::from_gvk(&gvk)).data(json!({
            "spec": {
                "secretName": pbx.tls_secret_name,
                "dnsNames": dns_names,
                "issuerRef": {
                    "name": issuer.map(|i| i.name.clone()),
                    "kind": issuer.map(|i| i.kind.clone()),
                    "group": issuer.map(|i| i.group.clone()),
                },
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "renewBefore": pbx.spec.tls.renew_before,
            }
        }));
    object.metadata = metadata(pbx, pbx.tls_secret_name.clone());
    object
}

/// The PodMonitor of a PBX (operator flag `--pod-monitors`), with `labels`
/// added to the PBX's (what a Prometheus selects PodMonitors by): Prometheus
/// scrapes Asterisk's `/metrics` on the WSS port over TLS with the PBX's
/// own metrics credentials. It lives beside the PBX, since a PodMonitor
/// reads Secrets from its own namespace only. The operator's CA is trusted
/// for SelfSigned; other modes use Prometheus's system roots.
pub fn pod_monitor(pbx: &ValidatedPbx, labels: &BTreeMap<String, String>) -> DynamicObject {
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor");
    let secret = secret_name(&pbx.name);
    let mut tls = json!({ "serverName": pbx.spec.domain });
    if pbx.spec.tls.mode == TlsMode::SelfSigned {
        tls["ca"] = json!({"secret": {"name": pbx.tls_secret_name, "key": crate::certs::CA_CRT}});
    }
    let mut object = DynamicObject::new(&pbx.name, &ApiResource::from_gvk(&gvk)).data(json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(&pbx.name)},
            "podMetricsEndpoints": [{
                "port": "wss",
                "scheme": "https",
                "path": super::asterisk::METRICS_PATH,
                "basicAuth": {
                    "username": {"name": secret, "key": METRICS_USERNAME_KEY},
                    "password": {"name": secret, "key": METRICS_PASSWORD_KEY},
                },
                "tlsConfig": tls,
            }],
        }
    }));
    object.metadata = metadata(pbx, pbx.name.clone());
    let own = object.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (key, value) in labels {
        // The PBX's own labels find and prune it: never overridden.
        own.entry(key.clone()).or_insert_with(|| value.clone());
    }
    object
}

fn external_service_fields(pbx: &ValidatedPbx) -> ServiceSpec {
    let svc = &pbx.spec.wss.service;
    let type_ = match svc.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    let external = svc.type_ != ServiceType::ClusterIP;
    ServiceSpec {
        type_: Some(type_.into()),
        selector: Some(selector_labels(&pbx.name)),
        external_traffic_policy: svc.external_traffic_policy.filter(|_| external).map(|p| {
            match p {
                TrafficPolicy::Local => "Local",
                TrafficPolicy::Cluster => "Cluster",
            }
            .to_string()
        }),
        load_balancer_ip: svc
            .load_balancer_ip
            .clone()
            .filter(|_| svc.type_ == ServiceType::LoadBalancer),
        ..ServiceSpec::default()
    }
}

fn service_port(name: String, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.into()),
        ..ServicePort::default()
    }
}

/// A Service of the PBX's pod, typed and annotated as `spec.wss.service` says.
fn service(pbx: &ValidatedPbx, name: String, ports: Vec<ServicePort>) -> Service {
    let mut meta = metadata(pbx, name);
    if !pbx.spec.wss.service.annotations.is_empty() {
        meta.annotations = Some(pbx.spec.wss.service.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            ports: Some(ports),
            ..external_service_fields(pbx)
        }),
        ..Service::default()
    }
}

fn wss_service(pbx: &ValidatedPbx) -> Service {
    let wss = &pbx.spec.wss;
    let mut ports = vec![service_port("wss".into(), pbx.wss_port, "TCP")];
    ports.extend(wss.ws_port.map(|ws| service_port("ws".into(), ws, "TCP")));
    service(pbx, wss_service_name(&pbx.name), ports)
}

fn rtp_service(pbx: &ValidatedPbx) -> Service {
    let range = pbx.rtp_ports;
    // A Service cannot carry a range: one port per RTP port (admission
    // bounds the range in Service mode).
    let ports = (range.start..=range.end)
        .map(|p| service_port(format!("rtp-{p}"), p, "UDP"))
        .collect();
    service(pbx, rtp_service_name(&pbx.name), ports)
}

/// Hash of the files only a restart applies (the rest are reloaded in place).
pub fn restart_config_hash(config: &AsteriskConfig) -> String {
    let mut hasher = Sha256::new();
    for name in RESTART_FILES {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(
            config
                .files
                .get(name)
                .map(String::as_bytes)
                .unwrap_or_default(),
        );
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mount(name: &str, path: String, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path,
        // The apiserver drops `readOnly: false`: writing it would make the
        // live object differ from the desired one forever (a write per reconcile).
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// Reloads Asterisk when a mounted file changes (ConfigMap, Secret and
/// certificate updates reach the pod without a restart; `core reload` keeps
/// calls up). Restart-only files are covered by the pod-template hash. As
/// PID 1 of its container the shell ignores SIGTERM unless trapped, and a
/// foreground `sleep` defers the trap: without both, every pod deletion or
/// rollout waited out the whole grace period (seen on a real kubelet).
const RELOADER_SCRIPT: &str = r#"trap 'exit 0' TERM
old=""
while true; do
  new=$(cat /etc/asterisk/*.conf /etc/asterisk/secrets/* /etc/asterisk/keys/* 2>/dev/null | md5sum)
  if [ -n "$old" ] && [ "$new" != "$old" ]; then
    asterisk -rx "core reload" && old=$new
  else
    old=$new
  fi
  sleep 2 & wait $!
done"#;

/// The preStop hook: stop taking calls (`core stop gracefully`: new
/// INVITEs get 503, calls up continue) and wait for Asterisk to end with
/// its last call, for at most DRAIN_SECONDS; then hang up what is left
/// (`core stop now`: callers get a BYE, not a dead connection). The
/// kubelet stops sending the pod traffic (endpoints) once it terminates.
const DRAIN_SCRIPT: &str = r#"/usr/sbin/asterisk -rx "core stop gracefully" >/dev/null 2>&1 &
i=0
while [ "$i" -lt "$DRAIN_SECONDS" ] && /usr/sbin/asterisk -rx "core show version" >/dev/null 2>&1; do
  sleep 1; i=$((i+1))
done
/usr/sbin/asterisk -rx "core stop now" >/dev/null 2>&1
exit 0"#;

/// The asterisk container's environment. A build with the `upgrade-drill`
/// feature renders one more variable: the upgrade test (tests/upgrade.rs)
/// runs it as the operator's next version, whose pod template differs as a
/// new version's does. Release builds never have the feature.
fn asterisk_env(pbx: &ValidatedPbx) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![var(
        "DRAIN_SECONDS",
        pbx.drain_timeout.as_secs().to_string(),
    )];
    if cfg!(feature = "upgrade-drill") {
        env.push(var("UPGRADE_DRILL", "next".into()));
    }
    env
}

/// What the grace period gives beyond drain.timeout: the final `core stop
/// now` and the kubelet's own SIGTERM.
const DRAIN_MARGIN_SECONDS: i64 = 15;

/// The startup probe: Asterisk fully booted. `asterisk -rx` fails at once
/// until Asterisk's control socket exists, so it is tried every 100 ms (for
/// 4 s, within the probe's 5 s) and then waits for the boot: the pod is
/// Ready as Asterisk finishes booting, not up to a probe period later
/// (measured on a real node: 0.9 s later with a bare `asterisk -rx` every
/// second).
const STARTUP_CHECK: &str = r#"i=0
until /usr/sbin/asterisk -rx "core waitfullybooted" >/dev/null 2>&1; do
  i=$((i+1)); [ $i -ge 40 ] && exit 1
  sleep 0.1
done"#;

/// Maps the pod's address to the public one for ICE (known only at start),
/// keeping the pod's own candidate too: browsers inside localNetworks reach
/// it directly instead of relying on hairpin NAT.
const ICE_CANDIDATES_SCRIPT: &str = r#"printf '[ice_host_candidates]\n%s => %s,include_local_address\n' "$POD_IP" "$EXTERNAL_ADDRESS" > /etc/asterisk/runtime/ice_host_candidates.conf"#;

fn stateful_set(pbx: &ValidatedPbx, config: &AsteriskConfig) -> StatefulSet {
    let spec = &pbx.spec;
    let host_network = spec.network.mode == NetworkMode::HostNetwork;
    let labels = labels(&pbx.name);
    let restricted = SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    };
    let etc_mounts = vec![
        mount("config", ETC_DIR.into(), true),
        mount("secrets", format!("{ETC_DIR}/{SECRETS_DIR}"), true),
        mount("tls", format!("{ETC_DIR}/{KEYS_DIR}"), true),
        mount("runtime", format!("{ETC_DIR}/{RUNTIME_DIR}"), true),
        mount("run", "/var/run/asterisk".into(), false),
    ];
    let mut asterisk_mounts = etc_mounts.clone();
    asterisk_mounts.push(mount("spool", "/var/spool/asterisk".into(), false));
    asterisk_mounts.push(mount("log", "/var/log/asterisk".into(), false));
    // In the host network these are the node's ports: declared as host
    // ports, the scheduler keeps two PBXs wanting the same one apart (the
    // RTP range cannot be declared; disjoint ranges are ports::conflict's).
    let tcp_port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        host_port: host_network.then_some(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let mut ports = vec![tcp_port("wss", pbx.wss_port)];
    if let Some(ws) = spec.wss.ws_port {
        ports.push(tcp_port("ws", ws));
    }
    let asterisk = Container {
        name: "asterisk".into(),
        image: Some(spec.image.clone()),
        command: Some(vec![
            "/usr/sbin/asterisk".into(),
            "-f".into(),
            "-n".into(),
            "-C".into(),
            format!("{ETC_DIR}/asterisk.conf"),
        ]),
        ports: Some(ports),
        // WSS accepts upgrades before Asterisk is fully booted, and SIP is
        // ignored until then: readiness starts only once it is booted
        // (STARTUP_CHECK). Every second, allowing two minutes to boot.
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["/bin/sh".into(), "-c".into(), STARTUP_CHECK.into()]),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(5),
            failure_threshold: Some(120),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(pbx.wss_port),
                host: None,
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["/bin/sh".into(), "-c".into(), DRAIN_SCRIPT.into()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        env: Some(asterisk_env(pbx)),
        resources: spec.resources.clone(),
        security_context: Some(restricted.clone()),
        volume_mounts: Some(asterisk_mounts),
        ..Container::default()
    };
    let reloader = Container {
        name: "config-reloader".into(),
        image: Some(spec.image.clone()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), RELOADER_SCRIPT.into()]),
        security_context: Some(restricted.clone()),
        volume_mounts: Some(etc_mounts),
        ..Container::default()
    };
    let init_containers = spec.network.external_address.as_ref().map(|ext| {
        vec![Container {
            name: "ice-candidates".into(),
            image: Some(spec.image.clone()),
            command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                ICE_CANDIDATES_SCRIPT.into(),
            ]),
            env: Some(vec![
                EnvVar {
                    name: "POD_IP".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                },
                EnvVar {
                    name: "EXTERNAL_ADDRESS".into(),
                    value: Some(ext.clone()),
                    ..EnvVar::default()
                },
            ]),
            security_context: Some(restricted.clone()),
            volume_mounts: Some(vec![mount(
                "runtime",
                format!("{ETC_DIR}/{RUNTIME_DIR}"),
                false,
            )]),
            ..Container::default()
        }]
    });
    // Asterisk refuses keys others can read; group-readable for fsGroup.
    let secret_mode = Some(0o440);
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&pbx.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "secrets".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(&pbx.name)),
                default_mode: secret_mode,
                items: Some(
                    config
                        .secret_files
                        .keys()
                        .map(|k| k8s_openapi::api::core::v1::KeyToPath {
                            key: k.clone(),
                            path: k.clone(),
                            mode: None,
                        })
                        .collect(),
                ),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(pbx.tls_secret_name.clone()),
                default_mode: secret_mode,
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("runtime"),
        empty_dir("run"),
        empty_dir("log"),
    ];
    let volume_claim_templates = spec.storage.as_ref().map(|storage| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("spool".into()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), storage.size.clone())])),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]
    });
    // With storage, the claim template provides the `spool` volume.
    if volume_claim_templates.is_none() {
        volumes.push(empty_dir("spool"));
    }
    let pod = PodSpec {
        host_network: host_network.then_some(true),
        dns_policy: Some(
            if host_network {
                "ClusterFirstWithHostNet"
            } else {
                "ClusterFirst"
            }
            .into(),
        ),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(ASTERISK_UID),
            run_as_group: Some(ASTERISK_UID),
            fs_group: Some(ASTERISK_UID),
            run_as_non_root: Some(true),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        init_containers,
        containers: vec![asterisk, reloader],
        volumes: Some(volumes),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(
            i64::try_from(pbx.drain_timeout.as_secs()).unwrap_or(i64::MAX / 2)
                + DRAIN_MARGIN_SECONDS,
        ),
        ..PodSpec::default()
    };
    StatefulSet {
        metadata: metadata(pbx, pbx.name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(wss_service_name(&pbx.name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&pbx.name)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.into(),
                        restart_config_hash(config),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates,
            persistent_volume_claim_retention_policy: spec.storage.as_ref().map(|s| {
                let policy = if s.delete_on_removal {
                    "Delete"
                } else {
                    "Retain"
                };
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(policy.into()),
                    when_scaled: Some("Retain".into()),
                }
            }),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn secret_of(pbx: &ValidatedPbx, name: String, type_: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: metadata(pbx, name),
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The operator-managed TLS Secrets: the CA (certificate and key, kept
/// apart so the key never reaches the pod) and the serving certificate.
pub fn self_signed_secrets(pbx: &ValidatedPbx, tls: &crate::certs::TlsMaterial) -> [Object; 2] {
    use crate::certs::{CA_CRT, CA_KEY, TLS_CRT, TLS_KEY};
    [
        Object::Secret(secret_of(
            pbx,
            ca_secret_name(&pbx.name),
            "Opaque",
            &[(CA_CRT, &tls.ca_crt), (CA_KEY, &tls.ca_key)],
        )),
        Object::Secret(secret_of(
            pbx,
            pbx.tls_secret_name.clone(),
            "kubernetes.io/tls",
            &[
                (TLS_CRT, &tls.tls_crt),
                (TLS_KEY, &tls.tls_key),
                (CA_CRT, &tls.ca_crt),
            ],
        )),
    ]
}

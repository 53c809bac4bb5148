//! The `WebRtcPbx` API (`pbx.webrtc.io/v1alpha1`): types, defaults and the
//! admission rules the apiserver enforces from the generated schema. Owns the
//! *shape* of user input; the checks only the controller can make live in
//! [`crate::validate`].
//!
//! Over 600 lines on purpose: the field docs here *are* the CRD's schema
//! descriptions (`kubectl explain`), so the whole API reads in one file, in
//! the order of the generated YAML; there is no logic to split out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every resource this operator defines.
pub const GROUP: &str = "pbx.webrtc.io";
/// The default Asterisk image (see `deploy/images/asterisk`).
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/webrtc-pbx-operator/asterisk:",
    env!("CARGO_PKG_VERSION")
);

/// A browser-reachable Asterisk PBX: WSS signalling, WebRTC media, users, and
/// continuous probes that prove a browser can register and hear audio.
// Repeated `printcolumn(type_ = ...)` entries are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pbx.webrtc.io",
    version = "v1alpha1",
    kind = "WebRtcPbx",
    plural = "webrtcpbxes",
    shortname = "wpbx",
    category = "pbx",
    namespaced,
    status = "WebRtcPbxStatus",
    derive = "PartialEq",
    doc = "A browser-reachable Asterisk PBX with WSS, WebRTC media and continuous probes.",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(
        name = "WSS URL",
        type_ = "string",
        json_path = ".status.endpoints.wssUrl"
    ),
    printcolumn(
        name = "Phone",
        type_ = "string",
        json_path = ".status.endpoints.phoneUrl",
        description = "The web phone the PBX serves",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Registered",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"SipRegistered\")].status"
    ),
    printcolumn(
        name = "Echo RTT",
        type_ = "string",
        json_path = ".status.probes.echoRoundTripMs",
        description = "Median echo-call round trip in milliseconds"
    ),
    printcolumn(
        name = "MOS",
        type_ = "number",
        json_path = ".status.probes.mos",
        description = "E-model MOS estimate of the last echo call"
    ),
    printcolumn(
        name = "Calls",
        type_ = "integer",
        json_path = ".status.probes.asterisk.activeCalls",
        description = "Calls up on Asterisk at the last probe run"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new(r"self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must start with a lowercase letter and hold only lowercase letters, digits and '-' (no '.'): it names the PBX's Services, which must be DNS labels"),
    validation = Rule::new("size(self.metadata.name) <= 52")
        .message("metadata.name must be at most 52 characters: the StatefulSet's pods carry a controller-revision-hash label of the name plus 11 characters, and labels are limited to 63")
)]
#[x_kube(
    validation = Rule::new("!has(self.wss.port) || !has(self.rtp.portRange) || !(self.wss.port >= self.rtp.portRange.start && self.wss.port <= self.rtp.portRange.end)")
        .message("wss.port lies inside rtp.portRange: move the WSS port out of the RTP range"),
    validation = Rule::new("!has(self.wss.wsPort) || !has(self.wss.port) || self.wss.wsPort != self.wss.port")
        .message("wss.wsPort equals wss.port: plain WS and WSS need different ports"),
    validation = Rule::new("!has(self.wss.wsPort) || !has(self.rtp.portRange) || !(self.wss.wsPort >= self.rtp.portRange.start && self.wss.wsPort <= self.rtp.portRange.end)")
        .message("wss.wsPort lies inside rtp.portRange: move it out of the RTP range"),
    validation = Rule::new("self.network.mode != 'Service' || (has(self.rtp.portRange) && self.rtp.portRange.end - self.rtp.portRange.start < 200)")
        .message("network.mode Service needs rtp.portRange of at most 200 ports: a Kubernetes Service cannot carry a port range, so each RTP port becomes one Service port; set a narrow range or use mode HostNetwork"),
    validation = Rule::new("!self.users.exists(u, u.extension == self.dialplan.echoExtension)")
        .message("dialplan.echoExtension is also a user's extension: pick an echo extension no user has (default *43)"),
    validation = Rule::new("self.probes.timeout == '' || self.probes.interval == '' || duration(self.probes.timeout) < duration(self.probes.interval)")
        .message("probes.timeout must be shorter than probes.interval"),
    // A StatefulSet's volumeClaimTemplates cannot change after creation.
    validation = Rule::new("has(self.storage) == has(oldSelf.storage)")
        .message("spec.storage cannot be added or removed on an existing WebRtcPbx (a StatefulSet's volume claims are fixed at creation): delete and recreate the WebRtcPbx; with storage.deleteOnRemoval false the claim and its data are kept for a PBX of the same name"),
    validation = Rule::new("!has(self.storage) || !has(oldSelf.storage) || (self.storage.size == oldSelf.storage.size && (has(self.storage.storageClassName) ? self.storage.storageClassName : '') == (has(oldSelf.storage.storageClassName) ? oldSelf.storage.storageClassName : ''))")
        .message("spec.storage.size and storageClassName cannot change on an existing WebRtcPbx (a StatefulSet's volume claims are fixed at creation): resize the PersistentVolumeClaim itself (kubectl edit pvc spool-NAME-0) if its StorageClass allows expansion, or delete and recreate the WebRtcPbx")
)]
#[serde(rename_all = "camelCase")]
pub struct WebRtcPbxSpec {
    /// The fully qualified domain name browsers use to reach the PBX
    /// (`wss://DOMAIN:PORT/ws`). The TLS certificate must cover it.
    #[x_kube(validation = Rule::new("self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\\\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')")
        .message("domain must be a lowercase DNS name such as pbx.example.com (no scheme, port or path)"))]
    #[schemars(length(min = 1, max = 253))]
    pub domain: String,

    /// Asterisk container image. It must contain Asterisk 22 with chan_pjsip,
    /// res_http_websocket, res_pjsip_transport_websocket, res_srtp and app_echo.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(r"!self.matches('[[:space:][:cntrl:]]')").message("image must be an image reference without spaces or control characters"))]
    pub image: String,

    /// Compute resources of the Asterisk container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the PBX pod must match (e.g. nodes with a public address).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the PBX pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub tolerations: Vec<Toleration>,

    /// Persistent storage for /var/spool/asterisk (voicemail, recordings,
    /// astdb), so they survive restarts. Without it the spool is an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// How media and signalling reach the pod.
    #[serde(default)]
    pub network: NetworkSpec,

    /// The WebSocket (WSS) signalling listener.
    #[serde(default)]
    pub wss: WssSpec,

    /// RTP media ports and ICE.
    #[serde(default)]
    pub rtp: RtpSpec,

    /// Where the WSS certificate comes from.
    #[serde(default)]
    pub tls: TlsSpec,

    /// SIP behaviour.
    #[serde(default)]
    pub sip: SipSpec,

    /// How a pod that must be replaced (a restart-only change, an operator
    /// upgrade, a node drain) lets its live calls end.
    #[serde(default)]
    pub drain: DrainSpec,

    /// SIP users (WebRTC endpoints), one device each.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["extension".into()]))]
    pub users: Vec<UserSpec>,

    /// Dialplan settings.
    #[serde(default)]
    pub dialplan: DialplanSpec,

    /// The continuous WSS, REGISTER and echo-call probes.
    #[serde(default)]
    pub probes: ProbesSpec,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

/// Persistent storage for the Asterisk spool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of the volume claim, e.g. `1Gi`.
    pub size: Quantity,
    /// StorageClass of the claim; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the claim when the WebRtcPbx is deleted. Default false: voicemail
    /// and recordings are kept.
    #[serde(default)]
    pub delete_on_removal: bool,
}

/// How the PBX is exposed on the network.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NetworkMode {
    /// The pod uses the node's network: RTP port ranges work without NAT in
    /// between (recommended).
    #[default]
    HostNetwork,
    /// WSS and RTP go through Kubernetes Services (one Service port per RTP
    /// port, so the range must be small).
    Service,
}

/// Network settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// `HostNetwork` (default) or `Service`.
    #[serde(default)]
    pub mode: NetworkMode,
    /// The public IP address clients reach the PBX at, when the node sits
    /// behind NAT: the pod maps its own address to it in the ICE host
    /// candidates it offers (browsers send media there; avoids one-way
    /// audio), set when the pod starts, so a change replaces the pod. Also
    /// written as external_media_address and external_signaling_address,
    /// which Asterisk applies to non-WebSocket SIP clients only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("network.externalAddress must be an IP address such as 203.0.113.10"))]
    #[schemars(length(max = 64))]
    pub external_address: Option<String>,
    /// Networks that are local (not behind the NAT), as CIDRs; pjsip local_net.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(n, isCIDR(n))").message("network.localNetworks entries must be CIDRs such as 10.0.0.0/8"))]
    #[schemars(inner(length(max = 64)))]
    pub local_networks: Vec<String>,
}

/// The WebSocket listener.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WssSpec {
    /// TLS port of the WebSocket server (`wss://DOMAIN:PORT/ws`). Left
    /// out: in HostNetwork mode the operator allocates one from its pool
    /// (`status.endpoints.wssUrl` shows it), in Service mode 8089.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Optional plain (unencrypted) WebSocket port; off by default. Browsers
    /// only allow `ws://` from `http://` pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub ws_port: Option<i32>,
    /// Address the WebSocket server binds to inside the pod. Default 0.0.0.0.
    #[serde(default = "default_bind_address")]
    #[x_kube(validation = Rule::new("isIP(self)").message("wss.bindAddress must be an IP address such as 0.0.0.0"))]
    #[schemars(length(max = 64))]
    pub bind_address: String,
    /// The WSS Service.
    #[serde(default)]
    pub service: WssServiceSpec,
}

impl Default for WssSpec {
    fn default() -> Self {
        Self {
            port: None,
            ws_port: None,
            bind_address: default_bind_address(),
            service: WssServiceSpec::default(),
        }
    }
}

/// The WSS port of a Service-mode PBX that leaves `wss.port` out.
pub const SERVICE_WSS_PORT: i32 = 8089;

fn default_bind_address() -> String {
    "0.0.0.0".into()
}

/// Kubernetes Service type for the WSS Service.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only (e.g. behind an ingress).
    #[default]
    ClusterIP,
    /// Exposed on every node's port.
    NodePort,
    /// Exposed through a cloud load balancer.
    LoadBalancer,
}

/// Traffic policy of an externally reachable Service.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrafficPolicy {
    /// Keep the client source address (needed for SIP NAT handling).
    Local,
    /// Spread over all nodes (the source address is lost).
    Cluster,
}

/// The WSS Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WssServiceSpec {
    /// Service type. Default ClusterIP.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// externalTrafficPolicy for NodePort and LoadBalancer Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// A fixed load balancer IP, where the provider supports it.
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("isIP(self)").message("wss.service.loadBalancerIP must be an IP address"))]
    #[schemars(length(max = 64))]
    pub load_balancer_ip: Option<String>,
}

/// A UDP port range.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.start <= self.end").message("rtp.portRange.start must not be greater than rtp.portRange.end"))]
pub struct PortRange {
    /// First port of the range (inclusive).
    #[schemars(range(min = 1024, max = 65535))]
    pub start: i32,
    /// Last port of the range (inclusive).
    #[schemars(range(min = 1024, max = 65535))]
    pub end: i32,
}

impl PortRange {
    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::try_from(self.end - self.start + 1).unwrap_or(0)
    }

    /// True when the range holds no port (only possible before validation).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `port` lies inside the range.
    pub fn contains(&self, port: i32) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

/// RTP media.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RtpSpec {
    /// UDP ports Asterisk uses for RTP. Forward all of them to the PBX, or
    /// calls connect without audio. Left out in HostNetwork mode: the
    /// operator allocates a block from its pool (`status.endpoints`
    /// shows it). Service mode needs it (at most 200 ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
    /// ICE servers advertised and used by Asterisk.
    #[serde(default)]
    pub ice: IceSpec,
}

/// ICE settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceSpec {
    /// STUN servers as `stun:HOST[:PORT]`. Asterisk uses the first one to
    /// learn its public address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^stun:[A-Za-z0-9.-]+(:[0-9]{1,5})?$'))")
        .message("rtp.ice.stunServers entries must look like stun:stun.example.net:3478"))]
    #[schemars(inner(length(max = 255)))]
    pub stun_servers: Vec<String>,
    /// TURN servers with credentials. Asterisk relays through the first one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub turn_servers: Vec<TurnServer>,
}

/// A TURN server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.credentialsSecretRef)")
    .message("rtp.ice.turnServers entries need credentialsSecretRef: a Secret with the TURN username and password"))]
pub struct TurnServer {
    /// `turn:HOST[:PORT]`, optionally with `?transport=udp`. Asterisk relays
    /// media through TURN over UDP only, so `turns:` and `?transport=tcp`
    /// are refused rather than silently downgraded.
    #[x_kube(validation = Rule::new(r"self.matches('^turn:[A-Za-z0-9.-]+(:[0-9]{1,5})?([?]transport=udp)?$')")
        .message("rtp.ice.turnServers url must look like turn:turn.example.net:3478 (Asterisk relays over UDP only: turns: and ?transport=tcp are not supported)"))]
    #[schemars(length(max = 255))]
    pub url: String,
    /// The Secret holding the TURN username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
}

/// A Secret holding a username and a password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret in the PBX's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the username. Default `username`.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password. Default `password`.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// Where the WSS certificate comes from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsMode {
    /// The operator runs a CA per PBX and issues and renews the certificate.
    /// Browsers must trust that CA (fine for tests and private networks).
    #[default]
    SelfSigned,
    /// A user-provided `kubernetes.io/tls` Secret (tls.crt, tls.key, optional
    /// ca.crt), validated before use.
    Secret,
    /// A cert-manager Certificate for the domain, issued by `issuerRef`.
    CertManager,
}

/// TLS settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'Secret' || (has(self.secretName) && self.secretName != '')")
        .message("tls.mode Secret needs tls.secretName: the kubernetes.io/tls Secret holding the certificate"),
    validation = Rule::new("self.mode == 'Secret' || !has(self.secretName)")
        .message("tls.secretName is only used with tls.mode Secret: remove it or set mode: Secret"),
    validation = Rule::new("self.mode != 'CertManager' || has(self.issuerRef)")
        .message("tls.mode CertManager needs tls.issuerRef (name and kind of a cert-manager Issuer or ClusterIssuer)"),
    validation = Rule::new("self.mode == 'CertManager' || !has(self.issuerRef)")
        .message("tls.issuerRef is only used with tls.mode CertManager: remove it or set mode: CertManager")
)]
pub struct TlsSpec {
    /// `SelfSigned` (default), `Secret` or `CertManager`.
    #[serde(default)]
    pub mode: TlsMode,
    /// With mode Secret: the kubernetes.io/tls Secret in the PBX's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// With mode CertManager: the issuer of the Certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Extra DNS names the certificate covers besides `domain` (lowercase
    /// DNS names, optionally `*.` wildcards; IP addresses are not DNS names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(inner(length(max = 253)))]
    #[x_kube(validation = Rule::new(r"self.all(n, n.matches('^([*][.])?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])*[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'))")
        .message("tls.extraDnsNames entries must be lowercase DNS names such as sip.example.com or *.example.com (IP addresses are not supported)"))]
    pub extra_dns_names: Vec<String>,
    /// Renew an operator-issued certificate this long before it expires
    /// (Go duration, default 720h = 30 days).
    #[serde(default = "default_renew_before")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h') && duration(self) <= duration('1440h')").message("tls.renewBefore must be a duration between 1h and 1440h (two thirds of the 90-day lifetime of operator-issued certificates), such as 720h"))]
    #[schemars(length(max = 32))]
    pub renew_before: String,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            mode: TlsMode::SelfSigned,
            secret_name: None,
            issuer_ref: None,
            extra_dns_names: Vec::new(),
            renew_before: default_renew_before(),
        }
    }
}

fn default_renew_before() -> String {
    "720h".into()
}

/// A cert-manager issuer reference.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer or ClusterIssuer.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// API group of the issuer. Default `cert-manager.io`.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// SIP settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SipSpec {
    /// Interval of CRLF keep-alives on connection-oriented transports
    /// (Go duration, default 30s; 0s turns them off). NATs and proxies drop
    /// idle flows after about 30-60 s, which drops registrations.
    #[serde(default = "default_keep_alive")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('1h')")
        .message("sip.keepAliveInterval must be a duration between 0s and 1h, such as 30s"))]
    #[schemars(length(max = 32))]
    pub keep_alive_interval: String,
}

impl Default for SipSpec {
    fn default() -> Self {
        Self {
            keep_alive_interval: default_keep_alive(),
        }
    }
}

fn default_keep_alive() -> String {
    "30s".into()
}

/// Draining a pod before it is replaced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long a pod being replaced waits for its live calls to end (Go
    /// duration, default 5m, at most 24h): it takes no new calls (Asterisk
    /// `core stop gracefully`), calls up continue, and it stops when the
    /// last one ends; calls still up at the timeout are hung up. 0s: no
    /// wait. Part of the pod (its termination grace period): a change
    /// replaces the pod, draining under the old timeout.
    #[serde(default = "default_drain_timeout")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('24h')")
        .message("drain.timeout must be a duration between 0s and 24h, such as 5m"))]
    #[schemars(length(max = 32))]
    pub timeout: String,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            timeout: default_drain_timeout(),
        }
    }
}

fn default_drain_timeout() -> String {
    "5m".into()
}

/// Audio codecs a user may use.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Opus (wideband, what browsers prefer).
    Opus,
    /// G.711 mu-law (PCMU).
    Ulaw,
    /// G.711 A-law (PCMA).
    Alaw,
    /// G.722 (wideband).
    G722,
}

impl Codec {
    /// The Asterisk codec name (`allow=`).
    pub fn asterisk_name(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::Ulaw => "ulaw",
            Codec::Alaw => "alaw",
            Codec::G722 => "g722",
        }
    }
}

/// A SIP user: one WebRTC endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// The extension, also the SIP user name (digits, optionally with * # +).
    #[x_kube(validation = Rule::new("self.matches('^[0-9*#+]{1,16}$')")
        .message("users[].extension must be 1-16 digits (optionally * # +), such as 1001"))]
    #[schemars(length(min = 1, max = 16))]
    pub extension: String,
    /// The caller name shown to callees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(r#"!self.matches(r'[[:cntrl:]"\\<>]')"#).message("users[].displayName must not contain control characters (such as a newline), double quotes, backslashes or angle brackets"))]
    pub display_name: Option<String>,
    /// The Secret key holding the password. When absent the operator
    /// generates a password and keeps it in its own Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Codecs in order of preference (default opus, ulaw).
    #[serde(default = "default_codecs")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub codecs: Vec<Codec>,
    /// Devices that may register at once (default 1). Over the limit the
    /// newest registration replaces the oldest (remove_existing=yes).
    #[serde(default = "default_max_contacts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_contacts: i32,
}

fn default_codecs() -> Vec<Codec> {
    vec![Codec::Opus, Codec::Ulaw]
}

fn default_max_contacts() -> i32 {
    1
}

/// A key in a Secret of the PBX's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Dialplan settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DialplanSpec {
    /// Extension that answers and echoes audio back (default `*43`). The
    /// probes call it; users can dial it to test their audio.
    #[serde(default = "default_echo_extension")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9*#+]{1,16}$')")
        .message("dialplan.echoExtension must be 1-16 digits (optionally * # +), such as *43"))]
    #[schemars(length(min = 1, max = 16))]
    pub echo_extension: String,
    /// Extra dialplan: a ConfigMap key whose text is included as
    /// extensions_custom.conf; its `[users-custom]` context is reachable by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_config_map_ref: Option<ConfigMapKeyRef>,
}

impl Default for DialplanSpec {
    fn default() -> Self {
        Self {
            echo_extension: default_echo_extension(),
            extra_config_map_ref: None,
        }
    }
}

fn default_echo_extension() -> String {
    "*43".into()
}

/// A key in a ConfigMap of the PBX's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the ConfigMap's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The probes the operator runs against the PBX.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbesSpec {
    /// Run the probes (default true). Off: WssReachable, SipRegistered and
    /// EchoCallHealthy are not reported and Ready does not wait for them.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between probe runs (Go duration, default 60s, 5s to 24h).
    #[serde(default = "default_probe_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5s') && duration(self) <= duration('24h')").message("probes.interval must be a duration between 5s and 24h, such as 60s"))]
    #[schemars(length(max = 32))]
    pub interval: String,
    /// Time limit of each probe step (Go duration, default 10s, at most 60s).
    #[serde(default = "default_probe_timeout")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('60s')").message("probes.timeout must be a duration between 1s and 60s, such as 10s: a stalled PBX holds a probe slot that long"))]
    #[schemars(length(max = 32))]
    pub timeout: String,
    /// Optional `host:port` to dial instead of the in-cluster address, while
    /// SNI, Host and the certificate are still checked against `domain`
    /// (like curl --connect-to). Empty: the in-cluster WSS address.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == '' || self.matches('^(\\\\[[0-9a-fA-F:.]+\\\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$')")
        .message("probes.connectAddress must be host:port, such as 127.0.0.1:18089, or empty"))]
    #[schemars(length(max = 261))]
    pub connect_address: String,
    /// The REGISTER probe.
    #[serde(default)]
    pub register: ProbeToggle,
    /// The echo-call probe.
    #[serde(default)]
    pub echo_call: EchoCallProbe,
    /// The user-call probe: the probe user calls a second probe user
    /// through the dialplan (both legs WebRTC) and audio is checked in
    /// each direction. Off by default.
    #[serde(default)]
    pub user_call: UserCallProbe,
    /// The lowest acceptable call quality: an echo call whose ITU-T G.107
    /// E-model MOS estimate (from its round trip, loss and jitter) is below
    /// this fails as PoorCallQuality (default 3.6, 1 to 4.5; 4.41 is a
    /// perfect narrowband call).
    #[serde(default = "default_min_mos")]
    #[schemars(range(min = 1.0, max = 4.5))]
    pub min_mos: f64,
}

fn default_min_mos() -> f64 {
    crate::probe::quality::DEFAULT_MIN_MOS
}

impl Default for ProbesSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            connect_address: String::new(),
            min_mos: default_min_mos(),
            register: ProbeToggle::default(),
            echo_call: EchoCallProbe::default(),
            user_call: UserCallProbe::default(),
        }
    }
}

fn default_probe_interval() -> String {
    "60s".into()
}

fn default_probe_timeout() -> String {
    "10s".into()
}

/// A probe that can be turned off.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProbeToggle {
    /// Run this probe (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for ProbeToggle {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

/// The echo-call probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EchoCallProbe {
    /// Run this probe (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Length of the call (Go duration, default 10s). Longer than 60s
    /// catches calls that drop at 30 or 60 seconds.
    #[serde(default = "default_echo_duration")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('10m')")
        .message("probes.echoCall.duration must be a duration between 1s and 10m, such as 10s"))]
    #[schemars(length(max = 32))]
    pub duration: String,
}

impl Default for EchoCallProbe {
    fn default() -> Self {
        Self {
            enabled: true,
            duration: default_echo_duration(),
        }
    }
}

fn default_echo_duration() -> String {
    "10s".into()
}

/// The user-call probe. Its second probe user (`wpbx-probe-callee`) exists
/// only while it is enabled; both probe users reach each other and the
/// echo extension, nothing else.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UserCallProbe {
    /// Run this probe (default false). Its condition, UserCallHealthy, is
    /// then part of Ready.
    #[serde(default)]
    pub enabled: bool,
    /// Length of the call (Go duration, default 10s).
    #[serde(default = "default_echo_duration")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('10m')")
        .message("probes.userCall.duration must be a duration between 1s and 10m, such as 10s"))]
    #[schemars(length(max = 32))]
    pub duration: String,
}

impl Default for UserCallProbe {
    fn default() -> Self {
        Self {
            enabled: false,
            duration: default_echo_duration(),
        }
    }
}

/// What the operator observed. Read by `kubectl wait`, Argo CD and Flux.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebRtcPbxStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: ConfigRendered, CertificateReady, WorkloadReady,
    /// WssReachable, SipRegistered, EchoCallHealthy, UserCallHealthy, Ready,
    /// Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where clients connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsStatus>,
    /// Facts about the serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// Figures measured by the last probe run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbeFigures>,
}

/// Client endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsStatus {
    /// The WebSocket URL to paste into JsSIP or SIP.js.
    pub wss_url: String,
    /// The web phone the PBX serves on its WSS port (the project's
    /// Asterisk image; a custom `spec.image` must ship it, see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_url: Option<String>,
    /// The WSS port (from the spec, or allocated by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss_port: Option<i32>,
    /// The RTP ports (from the spec, or allocated by the operator): in
    /// HostNetwork mode, the node's UDP ports a firewall must open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_port_range: Option<PortRange>,
}

/// The serving certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// DNS names the certificate covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

/// Figures of the last probe run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeFigures {
    /// When the probe ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// TCP connect, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    /// TLS handshake, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ms: Option<f64>,
    /// WebSocket upgrade, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_ms: Option<f64>,
    /// REGISTER round trip (challenge and answer), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_ms: Option<f64>,
    /// Median echo-call round trip, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_round_trip_ms: Option<f64>,
    /// Echo-call packet loss, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<f64>,
    /// Echo-call interarrival jitter (RFC 3550), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// ITU-T G.107 E-model MOS estimate of the echo call (1-4.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mos: Option<f64>,
    /// E-model transmission rating R of the echo call (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r_factor: Option<f64>,
    /// Echo call: INVITE sent to its 200 OK, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_ms: Option<f64>,
    /// Echo call: 200 OK to ICE connected, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_ms: Option<f64>,
    /// Echo call: ICE connected to DTLS-SRTP done, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtls_ms: Option<f64>,
    /// Echo call: DTLS done to the first packet echoed, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_echo_ms: Option<f64>,
    /// What Asterisk reported about itself (its `/metrics`), read during
    /// the run before the echo call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asterisk: Option<AsteriskFigures>,
    /// The call between the two probe users (`probes.userCall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_call: Option<UserCallFigures>,
}

/// Figures of the user call: the whole call and each direction.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCallFigures {
    /// INVITE sent to both ends' DTLS-SRTP up, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_ms: Option<f64>,
    /// Median delay there plus median delay back, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_ms: Option<f64>,
    /// E-model MOS estimate of the worse direction (1-4.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mos: Option<f64>,
    /// Audio from the calling probe user to the called one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_to_callee: Option<DirectionFigures>,
    /// Audio from the called probe user back to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callee_to_caller: Option<DirectionFigures>,
}

/// What one direction of the user call carried.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectionFigures {
    /// Packets sent while both ends were connected.
    #[serde(default)]
    pub packets_sent: u32,
    /// Of those, packets received.
    #[serde(default)]
    pub packets_received: u32,
    /// Loss, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<f64>,
    /// Median one-way delay, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// Interarrival jitter (RFC 3550), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
}

/// Asterisk's own figures (res_prometheus), the probe's endpoint and call
/// left out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsteriskFigures {
    /// Calls up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_calls: Option<u64>,
    /// Channels up (one or two per call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_channels: Option<u64>,
    /// Endpoints configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<u64>,
    /// Endpoints with a registered contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints_online: Option<u64>,
    /// Seconds since Asterisk started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// Why the metrics could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

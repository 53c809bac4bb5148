//! The validate step: a `WebRtcPbx` plus the objects it references (already
//! fetched by the caller) become a [`ValidatedPbx`], the typed input of the
//! pure renderers, or a list of [`Problem`]s, one per thing the user must fix.
//! Checks the apiserver cannot make (missing Secrets and keys, durations the
//! code must parse) live here; the schema rules live in [`crate::api`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;

use crate::api::{
    Codec, NetworkMode, PortRange, SERVICE_WSS_PORT, SecretKeyRef, TlsMode, WebRtcPbx,
    WebRtcPbxSpec,
};

mod fields;
pub use fields::*;

/// User name of the probe endpoint. Never a valid extension (extensions are
/// digits), so it cannot collide with a user.
pub const PROBE_USERNAME: &str = "wpbx-probe";
/// User name (and extension) of the user-call probe's callee, which exists
/// only while `probes.userCall` is enabled. Not digits either.
pub const CALLEE_USERNAME: &str = "wpbx-probe-callee";
/// The basic-auth user of Asterisk's `/metrics` (res_prometheus).
pub const METRICS_USERNAME: &str = "wpbx-metrics";

/// One thing wrong with a PBX's input, with the condition reason it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A field has a value the operator cannot use.
    #[error("spec.{field}: {message}")]
    InvalidSpec {
        /// JSON path below `spec`.
        field: String,
        /// What to change.
        message: String,
    },
    /// A referenced Secret does not exist.
    #[error("Secret {name} (referenced by spec.{field}) not found in namespace {namespace}")]
    SecretNotFound {
        /// Secret name.
        name: String,
        /// Namespace searched.
        namespace: String,
        /// Referencing field.
        field: String,
    },
    /// A referenced Secret lacks the key.
    #[error("Secret {name} has no key {key} (referenced by spec.{field})")]
    SecretKeyMissing {
        /// Secret name.
        name: String,
        /// Missing key.
        key: String,
        /// Referencing field.
        field: String,
    },
    /// The operator's policy does not allow what the field asks for.
    #[error("spec.{field}: {message}")]
    PolicyDenied {
        /// JSON path below `spec`.
        field: String,
        /// What is not allowed, and who can allow it.
        message: String,
    },
    /// A referenced ConfigMap or its key does not exist.
    #[error(
        "ConfigMap {name} with key {key} (referenced by spec.{field}) not found in namespace {namespace}"
    )]
    ConfigMapNotFound {
        /// ConfigMap name.
        name: String,
        /// Key.
        key: String,
        /// Namespace searched.
        namespace: String,
        /// Referencing field.
        field: String,
    },
}

/// The objects a PBX references, fetched by the caller (the dereference step).
#[derive(Debug, Default, Clone)]
pub struct Referenced {
    /// Secrets of the PBX's namespace, by name (only the referenced ones are needed).
    pub secrets: BTreeMap<String, Secret>,
    /// ConfigMaps of the PBX's namespace, by name.
    pub config_maps: BTreeMap<String, ConfigMap>,
}

impl Referenced {
    /// Collects the Secrets and ConfigMaps from a list of objects, by name.
    pub fn from_objects(secrets: Vec<Secret>, config_maps: Vec<ConfigMap>) -> Self {
        Self {
            secrets: secrets.into_iter().map(|s| (s.name_any(), s)).collect(),
            config_maps: config_maps.into_iter().map(|c| (c.name_any(), c)).collect(),
        }
    }
}

/// Passwords the operator generated earlier (read back from its own Secret)
/// or generates now. Randomness stays with the caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Generated passwords of users without `passwordSecretRef`, by extension.
    pub user_passwords: BTreeMap<String, String>,
    /// The probe endpoint's password.
    pub probe_password: String,
    /// The password of Asterisk's `/metrics`.
    pub metrics_password: String,
    /// The user-call probe's callee password (empty while that probe is off).
    pub callee_password: String,
    /// The host ports the operator allocated (not stored in the Secret:
    /// the allocation ledger holds them).
    pub ports: crate::allocate::Allocation,
}

/// A user ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedUser {
    /// Extension and SIP user name.
    pub extension: String,
    /// Caller name.
    pub display_name: Option<String>,
    /// The SIP password.
    pub password: String,
    /// Codecs in order of preference.
    pub codecs: Vec<Codec>,
    /// Simultaneous registrations.
    pub max_contacts: i32,
    /// True when the operator generated the password.
    pub generated_password: bool,
}

/// A TURN server with its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// `host:port` without the `turn:` scheme.
    pub address: String,
    /// TURN user name.
    pub username: String,
    /// TURN password.
    pub password: String,
}

/// Everything the renderers need, checked and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPbx {
    /// Name of the WebRtcPbx.
    pub name: String,
    /// The WSS port: the spec's, else allocated (HostNetwork), else 8089.
    pub wss_port: i32,
    /// The RTP ports: the spec's, else allocated.
    pub rtp_ports: PortRange,
    /// Whether any of them came from the operator's pools.
    pub allocated: bool,
    /// Namespace of the WebRtcPbx.
    pub namespace: String,
    /// UID, when the object came from the apiserver (owner references need it).
    pub uid: Option<String>,
    /// The spec, defaults applied.
    pub spec: WebRtcPbxSpec,
    /// Users with their passwords.
    pub users: Vec<ValidatedUser>,
    /// The probe endpoint's password.
    pub probe_password: String,
    /// The password of Asterisk's `/metrics` (user [`METRICS_USERNAME`]).
    pub metrics_password: String,
    /// The user-call probe's callee password; `Some` only while
    /// `probes.userCall` is enabled (the callee endpoint exists only then).
    pub callee_password: Option<String>,
    /// First STUN server as `host:port`.
    pub stun: Option<String>,
    /// First TURN server.
    pub turn: Option<TurnServer>,
    /// Text of the extra dialplan.
    pub extra_dialplan: Option<String>,
    /// CRLF keep-alive interval.
    pub keep_alive: Duration,
    /// Time between probe runs.
    pub probe_interval: Duration,
    /// Time limit of each probe step.
    pub probe_timeout: Duration,
    /// Length of the echo call.
    pub echo_duration: Duration,
    /// Length of the user call.
    pub user_call_duration: Duration,
    /// How long before expiry an operator-issued certificate is renewed.
    pub renew_before: Duration,
    /// How long a pod being replaced waits for its calls to end.
    pub drain_timeout: Duration,
    /// Name of the Secret holding tls.crt / tls.key.
    pub tls_secret_name: String,
}

impl ValidatedPbx {
    /// The URL browsers connect to.
    pub fn wss_url(&self) -> String {
        format!("wss://{}:{}/ws", self.spec.domain, self.wss_port)
    }
}

/// Names of the Secrets PBX `name` reads but does not own (passwords, TURN
/// credentials, a user's or cert-manager's certificate): a change to any of
/// them re-renders the PBX.
pub fn referenced_secrets(name: &str, spec: &WebRtcPbxSpec) -> Vec<String> {
    let mut names: Vec<String> = spec
        .users
        .iter()
        .filter_map(|u| u.password_secret_ref.as_ref().map(|r| r.name.clone()))
        .chain(
            spec.rtp
                .ice
                .turn_servers
                .iter()
                .filter_map(|t| t.credentials_secret_ref.as_ref().map(|c| c.name.clone())),
        )
        .chain((spec.tls.mode != TlsMode::SelfSigned).then(|| tls_secret_name(name, spec)))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Extensions whose password the operator must generate (no passwordSecretRef).
pub fn users_needing_generated_passwords(spec: &WebRtcPbxSpec) -> Vec<String> {
    spec.users
        .iter()
        .filter(|u| u.password_secret_ref.is_none())
        .map(|u| u.extension.clone())
        .collect()
}

/// Fills in the passwords the operator generates and has not stored yet,
/// keeping every stored one. The caller passes the randomness.
pub fn fill_generated<R: rand::Rng>(
    spec: &WebRtcPbxSpec,
    mut generated: Generated,
    rng: &mut R,
) -> Generated {
    let mut random = || -> String {
        (0..24)
            .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
            .collect()
    };
    for ext in users_needing_generated_passwords(spec) {
        generated
            .user_passwords
            .entry(ext)
            .or_insert_with(&mut random);
    }
    if generated.probe_password.is_empty() {
        generated.probe_password = random();
    }
    if generated.metrics_password.is_empty() {
        generated.metrics_password = random();
    }
    if spec.probes.user_call.enabled && generated.callee_password.is_empty() {
        generated.callee_password = random();
    }
    generated
}

/// The Secret the TLS material is read from for a PBX.
pub fn tls_secret_name(name: &str, spec: &WebRtcPbxSpec) -> String {
    match (spec.tls.mode, &spec.tls.secret_name) {
        (TlsMode::Secret, Some(secret)) => secret.clone(),
        _ => crate::names::tls_secret_name(name),
    }
}

/// The WSS port and RTP range: the spec's, else what the operator
/// allocated, else (WSS in Service mode) the fixed default; a problem for
/// each that has none.
fn resolve_ports(
    spec: &WebRtcPbxSpec,
    allocated: &crate::allocate::Allocation,
    problems: &mut Vec<Problem>,
) -> (Option<i32>, Option<PortRange>) {
    let service = spec.network.mode == NetworkMode::Service;
    let wss = spec
        .wss
        .port
        .or(allocated.wss)
        .or(service.then_some(SERVICE_WSS_PORT));
    let rtp = spec.rtp.port_range.or(allocated.rtp);
    let why = |what: &str| {
        allocated.shortage.clone().unwrap_or_else(|| {
            format!("no {what} was allocated yet (the operator allocates it in HostNetwork mode)")
        })
    };
    if wss.is_none() {
        problems.push(Problem::InvalidSpec {
            field: "wss.port".into(),
            message: why("WSS port"),
        });
    }
    if rtp.is_none() {
        let message = if service {
            "network.mode Service needs rtp.portRange (at most 200 ports)".into()
        } else {
            why("RTP port block")
        };
        problems.push(Problem::InvalidSpec {
            field: "rtp.portRange".into(),
            message,
        });
    }
    (wss, rtp)
}

/// Checks a PBX against what it references and resolves it for rendering.
/// Returns every problem found, not just the first.
pub fn validate(
    pbx: &WebRtcPbx,
    referenced: &Referenced,
    generated: &Generated,
) -> Result<ValidatedPbx, Vec<Problem>> {
    let spec = &pbx.spec;
    let name = pbx.name_any();
    let namespace = pbx.namespace().unwrap_or_else(|| "default".into());
    let mut problems = Vec::new();

    check_name(&name, &mut problems);
    let (wss_port, rtp_ports) = resolve_ports(spec, &generated.ports, &mut problems);
    check_spec(spec, wss_port, rtp_ports, &mut problems);
    // Parsed once, into the validated type: nothing downstream re-parses
    // with a default of its own.
    let mut duration = |field: &str, value: &str, range: (Duration, Duration)| {
        duration_field(field, value, range, &mut problems).unwrap_or_default()
    };
    let keep_alive = duration(
        "sip.keepAliveInterval",
        &spec.sip.keep_alive_interval,
        (Duration::ZERO, Duration::from_secs(3600)),
    );
    let probe_interval = duration("probes.interval", &spec.probes.interval, PROBE_INTERVAL);
    let probe_timeout = duration("probes.timeout", &spec.probes.timeout, PROBE_TIMEOUT);
    let echo_duration = duration(
        "probes.echoCall.duration",
        &spec.probes.echo_call.duration,
        ECHO_DURATION,
    );
    let user_call_duration = duration(
        "probes.userCall.duration",
        &spec.probes.user_call.duration,
        ECHO_DURATION,
    );
    let renew_before = duration("tls.renewBefore", &spec.tls.renew_before, RENEW_BEFORE);
    let drain_timeout = duration("drain.timeout", &spec.drain.timeout, DRAIN_TIMEOUT);

    let mut users = Vec::new();
    for (i, user) in spec.users.iter().enumerate() {
        let (password, generated_password) = match &user.password_secret_ref {
            Some(r) => {
                let field = format!("users[{i}].passwordSecretRef");
                match secret_value(referenced, r, &namespace, &field, &mut problems) {
                    Some(p) if p.is_empty() => {
                        problems.push(Problem::InvalidSpec {
                            field,
                            message: format!(
                                "Secret {} key {} holds an empty password",
                                r.name, r.key
                            ),
                        });
                        continue;
                    }
                    Some(p) => match text_problem(&p, MAX_SECRET_TEXT) {
                        Some(why) => {
                            problems.push(Problem::InvalidSpec {
                                field,
                                message: format!(
                                    "the password in Secret {} key {} {why}",
                                    r.name, r.key
                                ),
                            });
                            continue;
                        }
                        None => (p, false),
                    },
                    None => continue,
                }
            }
            None => match generated.user_passwords.get(&user.extension) {
                Some(p) => (p.clone(), true),
                None => {
                    problems.push(Problem::InvalidSpec {
                        field: format!("users[{i}]"),
                        message: format!(
                            "no password for extension {}: set passwordSecretRef or let the operator generate one",
                            user.extension
                        ),
                    });
                    continue;
                }
            },
        };
        users.push(ValidatedUser {
            extension: user.extension.clone(),
            display_name: user.display_name.clone(),
            password,
            codecs: user.codecs.clone(),
            max_contacts: user.max_contacts,
            generated_password,
        });
    }

    let stun = spec
        .rtp
        .ice
        .stun_servers
        .first()
        .map(|s| s.trim_start_matches("stun:").to_string());
    let turn = spec.rtp.ice.turn_servers.first().and_then(|t| {
        let field = "rtp.ice.turnServers[0].credentialsSecretRef".to_string();
        let Some(creds) = &t.credentials_secret_ref else {
            problems.push(Problem::InvalidSpec {
                field,
                message: "TURN servers need credentialsSecretRef".into(),
            });
            return None;
        };
        let user = secret_value(
            referenced,
            &SecretKeyRef {
                name: creds.name.clone(),
                key: creds.username_key.clone(),
            },
            &namespace,
            &field,
            &mut problems,
        );
        let pass = secret_value(
            referenced,
            &SecretKeyRef {
                name: creds.name.clone(),
                key: creds.password_key.clone(),
            },
            &namespace,
            &field,
            &mut problems,
        );
        // `turn:HOST[:PORT][?transport=udp]` (check_spec refuses the rest).
        let address = t
            .url
            .trim_start_matches("turn:")
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        let (username, password) = (user?, pass?);
        for (what, value) in [("username", &username), ("password", &password)] {
            if let Some(why) = text_problem(value, MAX_SECRET_TEXT) {
                problems.push(Problem::InvalidSpec {
                    field: field.clone(),
                    message: format!("the TURN {what} in Secret {} {why}", creds.name),
                });
            }
        }
        Some(TurnServer {
            address,
            username,
            password,
        })
    });

    let extra_dialplan = spec.dialplan.extra_config_map_ref.as_ref().and_then(|r| {
        let text = referenced
            .config_maps
            .get(&r.name)
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(&r.key))
            .cloned();
        if text.is_none() {
            problems.push(Problem::ConfigMapNotFound {
                name: r.name.clone(),
                key: r.key.clone(),
                namespace: namespace.clone(),
                field: "dialplan.extraConfigMapRef".into(),
            });
        }
        text
    });

    if generated.probe_password.is_empty() || generated.metrics_password.is_empty() {
        problems.push(Problem::InvalidSpec {
            field: "probes".into(),
            message: "no probe or metrics password was generated".into(),
        });
    }
    let user_call = spec.probes.enabled && spec.probes.user_call.enabled;
    if user_call && generated.callee_password.is_empty() {
        problems.push(Problem::InvalidSpec {
            field: "probes.userCall".into(),
            message: "no password was generated for the user call's callee".into(),
        });
    }

    let (Some(wss_port), Some(rtp_ports), true) = (wss_port, rtp_ports, problems.is_empty()) else {
        return Err(problems);
    };
    let mut spec = spec.clone();
    // Resolved into the spec too: what renders and what is reported agree.
    spec.wss.port = Some(wss_port);
    spec.rtp.port_range = Some(rtp_ports);
    Ok(ValidatedPbx {
        wss_port,
        rtp_ports,
        allocated: generated.ports.wss.is_some() || generated.ports.rtp.is_some(),
        tls_secret_name: tls_secret_name(&name, &spec),
        name,
        namespace,
        uid: pbx.metadata.uid.clone(),
        spec,
        users,
        probe_password: generated.probe_password.clone(),
        metrics_password: generated.metrics_password.clone(),
        callee_password: user_call.then(|| generated.callee_password.clone()),
        stun,
        turn,
        extra_dialplan,
        keep_alive,
        probe_interval,
        probe_timeout,
        echo_duration,
        user_call_duration,
        renew_before,
        drain_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_kept_and_completed() {
        let spec: WebRtcPbxSpec = serde_json::from_value(serde_json::json!({
            "domain": "pbx.test", "users": [{"extension": "1"}, {"extension": "2"}, {"extension": "3", "passwordSecretRef": {"name": "s", "key": "k"}}]
        }))
        .unwrap();
        let stored = Generated {
            user_passwords: [("1".to_string(), "kept".to_string())].into(),
            probe_password: String::new(),
            metrics_password: String::new(),
            callee_password: String::new(),
            ports: Default::default(),
        };
        let filled = fill_generated(&spec, stored, &mut rand::rng());
        assert_eq!(filled.user_passwords["1"], "kept");
        assert_eq!(filled.user_passwords["2"].len(), 24);
        assert!(!filled.user_passwords.contains_key("3"));
        assert_eq!(filled.probe_password.len(), 24);
        assert_eq!(filled.metrics_password.len(), 24);
        // No callee without the user-call probe.
        assert_eq!(filled.callee_password, "");
        let mut calling = spec.clone();
        calling.probes.user_call.enabled = true;
        let filled = fill_generated(&calling, filled, &mut rand::rng());
        assert_eq!(filled.callee_password.len(), 24);
        assert_eq!(filled.user_passwords["1"], "kept");
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "30", "30x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }
}

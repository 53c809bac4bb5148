//! Names in one place: every child object's name, the labels and
//! annotations the operator sets and selects by, its field manager, the
//! pod's name and the keys of its own Secret. Dependency-free, so every
//! step can use it and no two spell a name differently.

use std::collections::BTreeMap;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "webrtc-pbx-operator";
/// `app.kubernetes.io/name` of every child.
pub const APP_NAME: &str = "webrtc-pbx";
/// Label with the owning PBX's name (children are found and pruned by it).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Pod-template annotation: hash of the files that need a restart.
pub const CONFIG_HASH_ANNOTATION: &str = "pbx.webrtc.io/restart-config-hash";
/// Key of the probe password in the operator's Secret.
pub const PROBE_PASSWORD_KEY: &str = "probe-password";
/// Key of the user-call probe's callee password in the operator's Secret.
pub const CALLEE_PASSWORD_KEY: &str = "callee-password";
/// Key of the password of Asterisk's `/metrics` (basic auth) in the
/// operator's Secret; the user name is [`crate::validate::METRICS_USERNAME`].
pub const METRICS_PASSWORD_KEY: &str = "metrics-password";
/// Key of the `/metrics` user name in the operator's Secret (what a
/// PodMonitor's basicAuth reads).
pub const METRICS_USERNAME_KEY: &str = "metrics-username";
/// Prefix of generated user passwords' keys in the operator's Secret.
pub const USER_PASSWORD_KEY_PREFIX: &str = "password-";
/// The `managed-by` label key; its value is [`FIELD_MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The label selector of everything the operator manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}")
}

/// The label selector of PBX `pbx`'s children.
pub fn children_selector(pbx: &str) -> String {
    format!("{INSTANCE_LABEL}={pbx},{}", managed_selector())
}

/// The name of a PBX's pod (a StatefulSet of one).
pub fn pod_name(pbx: &str) -> String {
    format!("{pbx}-0")
}

/// The default name of a PBX's TLS Secret (`tls.secretName` overrides it in Secret mode).
pub fn tls_secret_name(pbx: &str) -> String {
    format!("{pbx}-tls")
}

/// Name of the operator's Secret of a PBX (credentials, pjsip auth).
pub fn secret_name(pbx: &str) -> String {
    format!("{pbx}-asterisk")
}

/// Name of the ConfigMap of a PBX.
pub fn config_map_name(pbx: &str) -> String {
    format!("{pbx}-asterisk")
}

/// Name of the WSS Service of a PBX.
pub fn wss_service_name(pbx: &str) -> String {
    format!("{pbx}-wss")
}

/// Name of the RTP Service of a PBX (Service mode).
pub fn rtp_service_name(pbx: &str) -> String {
    format!("{pbx}-rtp")
}

/// Labels every child of a PBX carries.
pub fn labels(pbx: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), APP_NAME.into()),
        (INSTANCE_LABEL.into(), pbx.into()),
        ("app.kubernetes.io/component".into(), "pbx".into()),
        (MANAGED_BY_LABEL.into(), FIELD_MANAGER.into()),
    ])
}

/// Labels selecting a PBX's pods (a subset of [`labels`], immutable).
pub fn selector_labels(pbx: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), APP_NAME.into()),
        (INSTANCE_LABEL.into(), pbx.into()),
    ])
}

/// The Secret key of an extension's generated password. Secret keys allow
/// only `[-._a-zA-Z0-9]`, extensions also `+ * #` (E.164 numbers, feature
/// codes): those become the words `plus`, `star`, `hash`, which no
/// extension contains, so the key decodes back. An all-digit extension
/// keeps the key earlier versions wrote.
pub fn password_key(extension: &str) -> String {
    format!("{USER_PASSWORD_KEY_PREFIX}{}", extension_key(extension))
}

/// An extension spelled as a Secret key (see [`password_key`]); read back
/// with [`extension_of_key`].
pub fn extension_key(extension: &str) -> String {
    let mut key = String::new();
    for c in extension.chars() {
        match c {
            '+' => key.push_str("plus"),
            '*' => key.push_str("star"),
            '#' => key.push_str("hash"),
            c => key.push(c),
        }
    }
    key
}

/// The extension a [`password_key`] (without its prefix) was made from.
pub fn extension_of_key(encoded: &str) -> String {
    encoded
        .replace("plus", "+")
        .replace("star", "*")
        .replace("hash", "#")
}

/// Name of the Secret with each user's client configuration (read by
/// `webrtc-pbx-operator client-config`; never mounted).
pub fn clients_secret_name(pbx: &str) -> String {
    format!("{pbx}-clients")
}

/// Key of the PBX-wide part of the client configuration in the clients Secret.
pub const CLIENTS_PBX_KEY: &str = "pbx.json";

/// Key of one user's part of the client configuration in the clients Secret.
pub fn client_user_key(extension: &str) -> String {
    format!("user-{}.json", extension_key(extension))
}

/// Name of the operator CA's Secret (SelfSigned mode; never mounted).
pub fn ca_secret_name(pbx: &str) -> String {
    format!("{pbx}-ca")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_extension_has_a_valid_secret_key_that_reads_back() {
        for ext in ["1001", "+4930123456", "*99", "#12", "*+#0"] {
            let key = password_key(ext);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
                "{key}"
            );
            let encoded = key.strip_prefix(USER_PASSWORD_KEY_PREFIX).unwrap();
            assert_eq!(extension_of_key(encoded), ext);
        }
        // The keys earlier versions wrote for all-digit extensions stay.
        assert_eq!(password_key("1001"), "password-1001");
    }
}

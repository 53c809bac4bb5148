//! What each kind of spec change needs before it takes effect, in one place
//! (pure data). Asterisk 22 applies most of its configuration in place on
//! `core reload`, which the pod's config-reloader runs when a mounted file
//! changes: no restart, no call dropped. The rest needs a new Asterisk
//! process, which the operator causes by changing the pod template (the
//! restart-config hash of [`super::RESTART_FILES`], or a field of the pod
//! itself). `tests/reload.rs` shows every row on real Asterisk.

/// How a change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// `core reload`: in place, live calls continue.
    Reload,
    /// A new pod (the template changes).
    Restart,
}

/// One kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The spec fields it covers.
    pub fields: &'static str,
    /// Where it is rendered.
    pub rendered: &'static str,
    /// How it takes effect.
    pub applied: Applied,
    /// What was seen on Asterisk 22 (the test that shows it).
    pub seen: &'static str,
}

/// Every kind of change a spec can make.
pub const TABLE: [Row; 11] = [
    Row {
        fields: "users[] added or removed, displayName, maxContacts",
        rendered: "pjsip.conf endpoints and AORs, extensions.conf",
        applied: Applied::Reload,
        seen: "a new user registers after the reload",
    },
    Row {
        fields: "passwords (users[].passwordSecretRef, generated)",
        rendered: "secrets/pjsip_auth.conf",
        applied: Applied::Reload,
        seen: "the old password is refused and the new one registers",
    },
    Row {
        fields: "users[].codecs",
        rendered: "pjsip.conf endpoint allow",
        applied: Applied::Reload,
        seen: "pjsip show endpoint lists the new codecs",
    },
    Row {
        fields: "dialplan.echoExtension, dialplan.extraConfigMapRef",
        rendered: "extensions.conf, extensions_custom.conf",
        applied: Applied::Reload,
        seen: "the new extension answers in the dialplan",
    },
    Row {
        fields: "certificates (rotation, tls.secretName contents)",
        rendered: "keys/tls.crt, keys/tls.key (same file names)",
        applied: Applied::Reload,
        seen: "the new certificate is served (tests/asterisk_render.rs)",
    },
    Row {
        fields: "rtp.portRange, rtp.ice (STUN, TURN)",
        rendered: "rtp.conf",
        applied: Applied::Reload,
        seen: "rtp show settings has the new range; new calls use it",
    },
    Row {
        fields: "network.localNetworks",
        rendered: "pjsip.conf transport-wss",
        applied: Applied::Reload,
        seen: "pjsip show transport has the new local_net (Asterisk's notice at every reload names what it keeps: protocol, bind, TLS, TCP, ToS, CoS)",
    },
    Row {
        fields: "network.externalAddress",
        rendered: "the pod template (the ice-candidates init container maps the pod's address to it in ICE host candidates when the pod starts); pjsip.conf transport-wss external_* addresses",
        applied: Applied::Restart,
        seen: "after a reload the transport shows the new external addresses, yet the SDP a WebSocket client gets carries it in neither c= nor a candidate: Asterisk 22 applies external_* to its UDP, TCP and TLS transports only; browsers get it through the ICE mapping, written at pod start",
    },
    Row {
        fields: "sip.keepAliveInterval",
        rendered: "pjsip.conf global",
        applied: Applied::Reload,
        seen: "pjsip show settings has the new interval",
    },
    Row {
        fields: "modules (the operator's own module list)",
        rendered: "modules.conf, asterisk.conf",
        applied: Applied::Restart,
        seen: "a module removed from modules.conf stays loaded after a reload",
    },
    Row {
        fields: "wss.port, wss.wsPort, wss.bindAddress, image, resources, storage, nodeSelector, tolerations, network.mode, drain.timeout",
        rendered: "the pod template (ports, host ports, volumes), http.conf",
        applied: Applied::Restart,
        seen: "Asterisk itself rebinds http.conf's port on reload, but the pod's declared ports and its Service change with it",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_module_list_and_the_pod_itself_need_a_restart() {
        // The module list, the external address (the pod's ICE mapping) and
        // what the pod declares.
        let restarts: Vec<&str> = TABLE
            .iter()
            .filter(|r| r.applied == Applied::Restart)
            .map(|r| r.rendered)
            .collect();
        assert_eq!(restarts.len(), 3, "{restarts:?}");
        // The files the restart hash covers are the table's restart files.
        for file in crate::render::RESTART_FILES {
            assert!(restarts.iter().any(|r| r.contains(file)), "{file}");
        }
    }
}

//! Renders the Asterisk configuration files of a validated PBX. Every
//! setting here exists to prevent a fault users hit (see the comments):
//! the config is the first half of the product, the probes the second.

use std::collections::BTreeMap;

use super::conf::{ConfFile, Section};
use crate::validate::{CALLEE_USERNAME, METRICS_USERNAME, PROBE_USERNAME, ValidatedPbx};

/// Where Asterisk reads its configuration inside the pod.
pub const ETC_DIR: &str = "/etc/asterisk";
/// Sub-directory of [`ETC_DIR`] holding the secret-bearing files.
pub const SECRETS_DIR: &str = "secrets";
/// Sub-directory of [`ETC_DIR`] holding tls.crt, tls.key and ca.crt.
pub const KEYS_DIR: &str = "keys";
/// Sub-directory of [`ETC_DIR`] for files written at pod start (node address).
pub const RUNTIME_DIR: &str = "runtime";
/// Dialplan context of the users.
pub const USERS_CONTEXT: &str = "users";
/// Dialplan context of the probe endpoints: the echo extension and, with
/// the user-call probe, the callee; nothing else.
pub const PROBE_CONTEXT: &str = "probe";
/// Dialplan context holding only the echo extension.
pub const ECHO_CONTEXT: &str = "echo-test";
/// The file of the user-supplied dialplan.
pub const CUSTOM_DIALPLAN_FILE: &str = "extensions_custom.conf";

/// Path of Asterisk's own metrics (res_prometheus) on the WSS port.
pub const METRICS_PATH: &str = "/metrics";

/// Concurrent HTTP/WebSocket sessions Asterisk accepts.
pub const HTTP_SESSION_LIMIT: u32 = 2000;

/// Files whose change needs an Asterisk restart (the rest are reloaded;
/// [`super::reloads`] has the whole table).
pub const RESTART_FILES: [&str; 2] = ["asterisk.conf", "modules.conf"];
/// The pjsip transport's section.
pub const TRANSPORT_SECTION: &str = "transport-wss";

/// The rendered files, relative to [`ETC_DIR`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsteriskConfig {
    /// Files without secrets (the ConfigMap), by file name.
    pub files: BTreeMap<String, String>,
    /// Secret-bearing files (the Secret, under [`SECRETS_DIR`]), by file name.
    pub secret_files: BTreeMap<String, String>,
}

/// Renders every configuration file.
pub fn render(pbx: &ValidatedPbx) -> AsteriskConfig {
    let mut files = BTreeMap::new();
    let mut secret_files = BTreeMap::new();
    files.insert("asterisk.conf".into(), asterisk_conf().render());
    files.insert("modules.conf".into(), modules_conf().render());
    files.insert("logger.conf".into(), logger_conf().render());
    files.insert("http.conf".into(), http_conf(pbx).render());
    files.insert("pjsip.conf".into(), pjsip_conf(pbx).render());
    files.insert("extensions.conf".into(), extensions_conf(pbx).render());
    files.insert("rtp.conf".into(), rtp_conf(pbx).render());
    files.insert("prometheus.conf".into(), prometheus_conf().render());
    // Core files Asterisk always reads: present, so a real error in the log
    // is never lost among "Unable to load config file" lines.
    let off = |name: &str, key: &str| {
        ConfFile::new()
            .section(Section::new(name).set(key, "no"))
            .render()
    };
    let bare = |name: &str| ConfFile::new().section(Section::new(name)).render();
    files.insert("manager.conf".into(), off("general", "enabled"));
    files.insert("cdr.conf".into(), off("general", "enable"));
    files.insert("cel.conf".into(), off("general", "enable"));
    files.insert("acl.conf".into(), ConfFile::new().render());
    files.insert("features.conf".into(), bare("general"));
    files.insert("udptl.conf".into(), bare("general"));
    files.insert(
        "pjproject.conf".into(),
        ConfFile::new()
            .section(Section::new("startup").set("type", "startup"))
            .render(),
    );
    if let Some(text) = &pbx.extra_dialplan {
        files.insert(CUSTOM_DIALPLAN_FILE.into(), text.clone());
    }
    secret_files.insert("pjsip_auth.conf".into(), pjsip_auth_conf(pbx).render());
    // No section header: included inside prometheus.conf's [general].
    let metrics_auth = Section::fragment()
        .set("auth_username", METRICS_USERNAME)
        .set("auth_password", &pbx.metrics_password);
    secret_files.insert(
        "prometheus_auth.conf".into(),
        ConfFile::new().section(metrics_auth).render(),
    );
    if let Some(turn) = &pbx.turn {
        // No section header: included inside rtp.conf's [general].
        let fragment = Section::fragment()
            .set("turnaddr", &turn.address)
            .set("turnusername", &turn.username)
            .set("turnpassword", &turn.password);
        secret_files.insert(
            "rtp_turn.conf".into(),
            ConfFile::new().section(fragment).render(),
        );
    }
    AsteriskConfig {
        files,
        secret_files,
    }
}

fn asterisk_conf() -> ConfFile {
    ConfFile::new()
        .section(
            Section::new("options")
                .set("verbose", 3)
                .set("hideconnect", "yes"),
        )
        // astdb on the spool volume, so it survives restarts with the PVC.
        .section(Section::new("directories").arrow("astdbdir", "/var/spool/asterisk"))
}

/// Modules loaded explicitly: `autoload=no` does not pull dependencies, and
/// autoloading opens ports (IAX2, DUNDi, ...) a WebRTC PBX must not expose.
const MODULES: [&str; 38] = [
    "res_timing_timerfd.so",
    "res_sorcery_config.so",
    "res_sorcery_memory.so",
    "res_sorcery_astdb.so",
    "res_pjproject.so",
    "res_http_websocket.so",
    "res_crypto.so",
    "res_srtp.so",
    "res_rtp_asterisk.so",
    "res_format_attr_opus.so",
    "res_pjsip.so",
    "res_pjsip_pubsub.so",
    "res_pjsip_session.so",
    "res_pjsip_transport_websocket.so",
    "res_pjsip_authenticator_digest.so",
    "res_pjsip_endpoint_identifier_user.so",
    "res_pjsip_registrar.so",
    "res_pjsip_nat.so",
    "res_pjsip_sdp_rtp.so",
    "res_pjsip_caller_id.so",
    "res_pjsip_dtmf_info.so",
    "res_pjsip_rfc3326.so",
    "res_pjsip_logger.so",
    "res_prometheus.so",
    "chan_pjsip.so",
    "func_pjsip_endpoint.so",
    "bridge_simple.so",
    "bridge_native_rtp.so",
    "bridge_builtin_features.so",
    "pbx_config.so",
    "app_dial.so",
    "app_echo.so",
    "codec_ulaw.so",
    "codec_alaw.so",
    "codec_g722.so",
    "codec_opus_open_source.so",
    "format_wav.so",
    "format_pcm.so",
];

fn modules_conf() -> ConfFile {
    let section = MODULES
        .iter()
        .fold(Section::new("modules").set("autoload", "no"), |s, m| {
            s.arrow("load", m)
        });
    ConfFile::new().section(section)
}

fn logger_conf() -> ConfFile {
    ConfFile::new()
        .section(Section::new("general").set("dateformat", "%F %T.%3q"))
        // Container logs: everything useful goes to stdout.
        .section(Section::new("logfiles").arrow("console", "notice,warning,error,verbose"))
}

fn http_conf(pbx: &ValidatedPbx) -> ConfFile {
    let wss = &pbx.spec.wss;
    let bind = bind_with_port(&wss.bind_address, pbx.wss_port);
    let keys = format!("{ETC_DIR}/{KEYS_DIR}");
    let mut general = Section::new("general")
        .set("servername", "webrtc-pbx")
        .set("enabled", "yes")
        // Every browser holds one WebSocket session; Asterisk's default of
        // 100 would refuse the 101st browser.
        .set("sessionlimit", HTTP_SESSION_LIMIT);
    // Without bindaddr Asterisk opens no plain HTTP listener: only WSS.
    if let Some(ws_port) = wss.ws_port {
        general = general
            .set("bindaddr", &wss.bind_address)
            .set("bindport", ws_port);
    }
    general = general
        .set("tlsenable", "yes")
        .set("tlsbindaddr", bind)
        .set("tlscertfile", format!("{keys}/tls.crt"))
        .set("tlsprivatekey", format!("{keys}/tls.key"))
        // The web phone (crate::clients::PHONE_PATH): same origin and
        // certificate as the WebSocket, so no mixed content.
        .set("enablestatic", "yes");
    ConfFile::new().section(general)
}

/// Asterisk's own metrics on the TLS listener, behind basic auth. Not on a
/// plain port of their own: Asterisk 22 has one plain and one TLS HTTP
/// listener, and a plain one also answers SIP over unencrypted WebSocket
/// on `/ws` (seen: 101 with no `ws` transport configured).
fn prometheus_conf() -> ConfFile {
    let general = Section::new("general")
        .set("enabled", "yes")
        .set("core_metrics_enabled", "yes")
        .set("uri", METRICS_PATH.trim_start_matches('/'))
        .set("auth_realm", "webrtc-pbx");
    // A hard #include: without its credentials the file fails to load,
    // rather than serving the metrics without auth.
    ConfFile::new()
        .section(general)
        .include(format!("{SECRETS_DIR}/prometheus_auth.conf"))
}

fn bind_with_port(address: &str, port: i32) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn pjsip_conf(pbx: &ValidatedPbx) -> ConfFile {
    let spec = &pbx.spec;
    let global = Section::new("global")
        .set("type", "global")
        // CRLF keep-alives hold NAT bindings and proxies open: registrations
        // otherwise vanish after ~30-60 s of silence.
        .set("keep_alive_interval", pbx.keep_alive.as_secs())
        .set("user_agent", "webrtc-pbx");
    let mut transport = Section::new(TRANSPORT_SECTION)
        .set("type", "transport")
        .set("protocol", "wss")
        .set("bind", "0.0.0.0");
    // Behind NAT, SDP and Contact must carry the public address, or audio
    // flows one way.
    if let Some(ext) = &spec.network.external_address {
        transport = transport
            .set("external_media_address", ext)
            .set("external_signaling_address", ext);
    }
    for net in &spec.network.local_networks {
        transport = transport.set("local_net", net);
    }
    let mut sections = vec![global, transport];
    for user in &pbx.users {
        let callerid = match &user.display_name {
            Some(name) => format!("\"{name}\" <{}>", user.extension),
            None => format!("<{}>", user.extension),
        };
        let codecs: Vec<&str> = user.codecs.iter().map(|c| c.asterisk_name()).collect();
        sections.push(aor(&user.extension, user.max_contacts));
        sections.push(
            webrtc_endpoint(&user.extension, USERS_CONTEXT, &codecs.join(","))
                .set("callerid", callerid),
        );
    }
    sections.push(aor(PROBE_USERNAME, 1));
    sections.push(
        // The probe speaks PCMU only and can reach the echo extension only:
        // a leaked probe credential must not place a toll call.
        webrtc_endpoint(PROBE_USERNAME, PROBE_CONTEXT, "ulaw").set("callerid", "\"probe\" <probe>"),
    );
    if pbx.callee_password.is_some() {
        // The user-call probe's callee: in the same confined context.
        sections.push(aor(CALLEE_USERNAME, 1));
        sections.push(
            webrtc_endpoint(CALLEE_USERNAME, PROBE_CONTEXT, "ulaw")
                .set("callerid", "\"probe callee\" <probe-callee>"),
        );
    }
    ConfFile::new()
        .sections(sections)
        .include(format!("{SECRETS_DIR}/pjsip_auth.conf"))
}

fn aor(name: &str, max_contacts: i32) -> Section {
    Section::new(name)
        .set("type", "aor")
        // max_contacts defaults to 0 (every REGISTER gets 403); one device
        // per user, the newest registration wins.
        .set("max_contacts", max_contacts.max(1))
        .set("remove_existing", "yes")
}

fn webrtc_endpoint(name: &str, context: &str, codecs: &str) -> Section {
    Section::new(name)
        .set("type", "endpoint")
        .set("context", context)
        .set("aors", name)
        .set("auth", format!("{name}-auth"))
        // bundle, rtcp-mux, AVPF, ICE and DTLS-SRTP: what browsers require.
        .set("webrtc", "yes")
        .set("disallow", "all")
        .set("allow", codecs)
        // A browser tab closed, or a WebSocket gone, sends no BYE: without
        // these the call stays up for ever, and a draining pod (`core stop
        // gracefully`) waits for it to the drain timeout.
        .set("rtp_timeout", RTP_TIMEOUT_SECONDS)
        .set("rtp_timeout_hold", RTP_TIMEOUT_HOLD_SECONDS)
}

/// Seconds without RTP after which a call is hung up.
const RTP_TIMEOUT_SECONDS: u32 = 30;
/// The same while on hold (browsers send no audio then, but RTCP).
const RTP_TIMEOUT_HOLD_SECONDS: u32 = 300;

fn pjsip_auth_conf(pbx: &ValidatedPbx) -> ConfFile {
    let auth = |user: &str, password: &str| {
        Section::new(format!("{user}-auth"))
            .set("type", "auth")
            .set("auth_type", "userpass")
            .set("username", user)
            .set("password", password)
    };
    let mut sections: Vec<Section> = pbx
        .users
        .iter()
        .map(|u| auth(&u.extension, &u.password))
        .collect();
    sections.push(auth(PROBE_USERNAME, &pbx.probe_password));
    if let Some(password) = &pbx.callee_password {
        sections.push(auth(CALLEE_USERNAME, password));
    }
    ConfFile::new().sections(sections)
}

fn extensions_conf(pbx: &ValidatedPbx) -> ConfFile {
    let echo = &pbx.spec.dialplan.echo_extension;
    let general = Section::new("general")
        .set("static", "yes")
        .set("writeprotect", "yes");
    let echo_ctx = Section::new(ECHO_CONTEXT)
        .arrow("exten", format!("{echo},1,Answer()"))
        .arrow("same", "n,Echo()")
        .arrow("same", "n,Hangup()");
    let mut users = Section::new(USERS_CONTEXT).arrow("include", ECHO_CONTEXT);
    if pbx.extra_dialplan.is_some() {
        users = users.arrow("include", "users-custom");
    }
    for user in &pbx.users {
        let ext = &user.extension;
        users = users
            .arrow(
                "exten",
                format!("{ext},1,Dial(${{PJSIP_DIAL_CONTACTS({ext})}},30)"),
            )
            .arrow("same", "n,Hangup()");
    }
    let mut probe = Section::new(PROBE_CONTEXT);
    probe = match pbx.callee_password {
        None => probe
            .comment("The probe reaches the echo extension and nothing else.")
            .arrow("include", ECHO_CONTEXT),
        // Dial(PJSIP/endpoint) rings the callee's registered contact.
        Some(_) => probe
            .comment("The probes reach the echo extension and the callee probe, nothing else.")
            .arrow("include", ECHO_CONTEXT)
            .arrow(
                "exten",
                format!("{CALLEE_USERNAME},1,Dial(PJSIP/{CALLEE_USERNAME},20)"),
            )
            .arrow("same", "n,Hangup()"),
    };
    let mut file = ConfFile::new().sections([general, echo_ctx, users, probe]);
    if pbx.extra_dialplan.is_some() {
        file = file.include(CUSTOM_DIALPLAN_FILE);
    }
    file
}

fn rtp_conf(pbx: &ValidatedPbx) -> ConfFile {
    let spec = &pbx.spec;
    let range = pbx.rtp_ports;
    let mut general = Section::new("general")
        // Only these ports need forwarding; outside them calls have no audio.
        .set("rtpstart", range.start)
        .set("rtpend", range.end)
        .set("strictrtp", "yes")
        .set("icesupport", "yes")
        .set_opt("stunaddr", pbx.stun.as_ref());
    if pbx.turn.is_some() {
        general = general.try_include(format!("{SECRETS_DIR}/rtp_turn.conf"));
    }
    // The pod's own address is only known at start: an init container maps
    // it to externalAddress in [ice_host_candidates] there.
    if spec.network.external_address.is_some() {
        general = general.try_include(format!("{RUNTIME_DIR}/ice_host_candidates.conf"));
    }
    ConfFile::new().section(general)
}

//! Client provisioning: what a softphone needs to reach one user of a PBX.
//! Owns the content of the `NAME-clients` Secret (a PBX-wide record and one
//! record per user, written by the render step) and the formats
//! `webrtc-pbx-operator client-config` prints from it: the JsSIP and SIP.js
//! configurations, the `sip:` URI and the web phone's provisioning link.
//! Pure: records in, text out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::TlsMode;
use crate::names::{CLIENTS_PBX_KEY, client_user_key};
use crate::validate::{ValidatedPbx, ValidatedUser};

/// Where Asterisk's HTTPS server serves the web phone (http.conf
/// `enablestatic`: `/static/` is `/usr/share/asterisk/static-http/`).
pub const PHONE_PATH: &str = "/static/phone/index.html";
/// The directory of the image the web phone's files are in.
pub const PHONE_DIR: &str = "/usr/share/asterisk/static-http/phone";
/// Registration lifetime clients ask for, seconds (JsSIP's and SIP.js's
/// default; inside Asterisk's 60-7200 s window).
pub const REGISTER_EXPIRES: u32 = 600;

/// The PBX-wide part of every user's client configuration.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PbxClient {
    /// `wss://DOMAIN:PORT/ws`.
    pub wss_url: String,
    /// The SIP domain (host part of every user's URI).
    pub domain: String,
    /// The extension that echoes audio back.
    pub echo_extension: String,
    /// STUN and TURN servers, as `RTCIceServer` objects.
    pub ice_servers: Vec<IceServer>,
    /// CRLF keep-alive interval, seconds (0: off).
    pub keep_alive_seconds: u64,
    /// The web phone served by the PBX.
    pub phone_url: String,
    /// The Secret whose `ca.crt` clients must trust (SelfSigned mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
}

/// One `RTCIceServer`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IceServer {
    /// `stun:` or `turn:` URL.
    pub urls: String,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// One user's part.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserClient {
    /// Extension and SIP user name.
    pub extension: String,
    /// The SIP password.
    pub password: String,
    /// Caller name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// The PBX-wide record of `pbx`.
pub fn pbx_client(pbx: &ValidatedPbx) -> PbxClient {
    let mut ice_servers: Vec<IceServer> = pbx
        .spec
        .rtp
        .ice
        .stun_servers
        .iter()
        .map(|s| IceServer {
            urls: s.clone(),
            username: None,
            credential: None,
        })
        .collect();
    // Asterisk relays over UDP only (the API refuses other transports).
    ice_servers.extend(pbx.turn.iter().map(|t| IceServer {
        urls: format!("turn:{}?transport=udp", t.address),
        username: Some(t.username.clone()),
        credential: Some(t.password.clone()),
    }));
    PbxClient {
        wss_url: pbx.wss_url(),
        domain: pbx.spec.domain.clone(),
        echo_extension: pbx.spec.dialplan.echo_extension.clone(),
        ice_servers,
        keep_alive_seconds: pbx.keep_alive.as_secs(),
        phone_url: phone_url(pbx),
        ca_secret: (pbx.spec.tls.mode == TlsMode::SelfSigned).then(|| pbx.tls_secret_name.clone()),
    }
}

/// Where `pbx` serves the web phone (also `status.endpoints.phoneUrl`).
pub fn phone_url(pbx: &ValidatedPbx) -> String {
    format!("https://{}:{}{PHONE_PATH}", pbx.spec.domain, pbx.wss_port)
}

/// One user's record.
pub fn user_client(user: &ValidatedUser) -> UserClient {
    UserClient {
        extension: user.extension.clone(),
        password: user.password.clone(),
        display_name: user.display_name.clone(),
    }
}

/// The data of the clients Secret: the PBX-wide record and one per user,
/// as JSON (a few hundred bytes per user, so 1000 users fit a Secret).
pub fn secret_data(pbx: &ValidatedPbx) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    data.insert(CLIENTS_PBX_KEY.to_string(), to_json(&pbx_client(pbx)));
    for user in &pbx.users {
        data.insert(
            client_user_key(&user.extension),
            to_json(&user_client(user)),
        );
    }
    data
}

fn to_json<T: Serialize>(value: &T) -> String {
    // These plain records always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

fn sip_uri_of(user: &str, domain: &str) -> String {
    format!("sip:{user}@{domain}")
}

/// The user's SIP address.
pub fn sip_uri(pbx: &PbxClient, user: &UserClient) -> String {
    sip_uri_of(&user.extension, &pbx.domain)
}

fn ice_json(pbx: &PbxClient) -> Value {
    json!(pbx.ice_servers)
}

/// JsSIP: `ua` is `JsSIP.UA`'s configuration without `sockets` (a socket
/// object, which JSON cannot carry), `socket` the URL of its
/// `JsSIP.WebSocketInterface`, `call` the options of `ua.call()`:
/// `new JsSIP.UA({...c.ua, sockets: [new JsSIP.WebSocketInterface(c.socket)]})`.
/// JsSIP sends no CRLF keep-alives; Asterisk's own keep the flow open.
pub fn jssip(pbx: &PbxClient, user: &UserClient) -> Value {
    let mut ua = json!({
        "uri": sip_uri(pbx, user),
        "authorization_user": user.extension,
        "password": user.password,
        "register": true,
        "register_expires": REGISTER_EXPIRES,
        "session_timers": false,
    });
    if let (Some(name), Some(map)) = (&user.display_name, ua.as_object_mut()) {
        map.insert("display_name".into(), json!(name));
    }
    json!({
        "socket": pbx.wss_url,
        "ua": ua,
        "call": {
            "mediaConstraints": {"audio": true, "video": false},
            "pcConfig": {"iceServers": ice_json(pbx)},
        },
        "echo": sip_uri_of(&pbx.echo_extension, &pbx.domain),
    })
}

/// SIP.js: the two arguments of `new SIP.Web.SimpleUser(c.server, c.options)`.
pub fn sipjs(pbx: &PbxClient, user: &UserClient) -> Value {
    let mut ua = json!({
        "authorizationUsername": user.extension,
        "authorizationPassword": user.password,
        // SimpleUser sets transportOptions.server only when transportOptions
        // is absent, so the server is repeated here.
        "transportOptions": {
            "server": pbx.wss_url,
            "keepAliveInterval": pbx.keep_alive_seconds,
        },
        "sessionDescriptionHandlerFactoryOptions": {
            "peerConnectionConfiguration": {"iceServers": ice_json(pbx)},
        },
    });
    if let (Some(name), Some(map)) = (&user.display_name, ua.as_object_mut()) {
        map.insert("displayName".into(), json!(name));
    }
    json!({
        "server": pbx.wss_url,
        "options": {
            "aor": sip_uri(pbx, user),
            "userAgentOptions": ua,
            "registererOptions": {"expires": REGISTER_EXPIRES},
        },
        "echo": sip_uri_of(&pbx.echo_extension, &pbx.domain),
    })
}

/// The web phone, pre-filled. The credentials travel in the fragment of an
/// `https:` URL: browsers never send a fragment to a server, so they reach
/// no log and no proxy, and the page is never plain HTTP.
pub fn phone_link(pbx: &PbxClient, user: &UserClient) -> String {
    let mut fragment = url::form_urlencoded::Serializer::new(String::new());
    fragment.append_pair("user", &user.extension);
    fragment.append_pair("password", &user.password);
    if let Some(name) = &user.display_name {
        fragment.append_pair("name", name);
    }
    if !pbx.ice_servers.is_empty() {
        fragment.append_pair("ice", &to_json(&pbx.ice_servers));
    }
    format!("{}#{}", pbx.phone_url, fragment.finish())
}

/// The one command that saves the CA and installs it for Chromium and
/// Firefox on Linux (NSS), for a PBX whose certificate is operator-issued.
pub fn trust_hint(namespace: &str, pbx: &str, user: &str) -> String {
    format!(
        "webrtc-pbx-operator client-config -n {namespace} {pbx} {user} --format ca > {pbx}-ca.crt \
         && certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n {namespace}-{pbx} -i {pbx}-ca.crt"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> (PbxClient, UserClient) {
        (
            PbxClient {
                wss_url: "wss://pbx.example.com:8089/ws".into(),
                domain: "pbx.example.com".into(),
                echo_extension: "*43".into(),
                ice_servers: vec![
                    IceServer {
                        urls: "stun:stun.example.net:3478".into(),
                        username: None,
                        credential: None,
                    },
                    IceServer {
                        urls: "turn:turn.example.net:3478?transport=udp".into(),
                        username: Some("t".into()),
                        credential: Some("s&=#".into()),
                    },
                ],
                keep_alive_seconds: 30,
                phone_url: format!("https://pbx.example.com:8089{PHONE_PATH}"),
                ca_secret: Some("demo-tls".into()),
            },
            UserClient {
                extension: "1001".into(),
                password: "p&ss word#".into(),
                display_name: Some("Alice Example".into()),
            },
        )
    }

    #[test]
    fn records_read_back() {
        let (pbx, user) = records();
        let back: PbxClient = serde_json::from_str(&to_json(&pbx)).unwrap();
        assert_eq!(back, pbx);
        let back: UserClient = serde_json::from_str(&to_json(&user)).unwrap();
        assert_eq!(back, user);
    }

    #[test]
    fn jssip_and_sipjs_carry_credentials_ice_and_keep_alive() {
        let (pbx, user) = records();
        let j = jssip(&pbx, &user);
        assert_eq!(j["socket"], "wss://pbx.example.com:8089/ws");
        assert_eq!(j["ua"]["uri"], "sip:1001@pbx.example.com");
        assert_eq!(j["ua"]["password"], "p&ss word#");
        assert_eq!(j["ua"]["display_name"], "Alice Example");
        assert_eq!(j["call"]["pcConfig"]["iceServers"][1]["credential"], "s&=#");
        assert_eq!(j["echo"], "sip:*43@pbx.example.com");
        let s = sipjs(&pbx, &user);
        assert_eq!(s["options"]["aor"], "sip:1001@pbx.example.com");
        let ua = &s["options"]["userAgentOptions"];
        assert_eq!(ua["authorizationPassword"], "p&ss word#");
        assert_eq!(ua["transportOptions"]["keepAliveInterval"], 30);
        assert_eq!(ua["transportOptions"]["server"], s["server"]);
        assert_eq!(
            ua["sessionDescriptionHandlerFactoryOptions"]["peerConnectionConfiguration"]["iceServers"]
                [0]["urls"],
            "stun:stun.example.net:3478"
        );
    }

    #[test]
    fn the_link_keeps_credentials_in_the_fragment_of_an_https_url() {
        let (pbx, user) = records();
        let link = phone_link(&pbx, &user);
        let url = url::Url::parse(&link).unwrap();
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.query(), None, "{link}");
        let pairs: BTreeMap<String, String> =
            url::form_urlencoded::parse(url.fragment().unwrap().as_bytes())
                .into_owned()
                .collect();
        assert_eq!(pairs["user"], "1001");
        assert_eq!(pairs["password"], "p&ss word#");
        assert_eq!(pairs["name"], "Alice Example");
        let ice: Vec<IceServer> = serde_json::from_str(&pairs["ice"]).unwrap();
        assert_eq!(ice, pbx.ice_servers);
    }
}

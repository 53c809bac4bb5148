//! Admission against the real kube-apiserver: the generated CRD accepts the
//! examples and refuses bad input with a message that says what to change.

use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};
use webrtc_pbx_operator::api::WebRtcPbx;

use harness::fixture::{Pbx, untyped_api};

#[tokio::test]
async fn examples_are_accepted_with_defaults_applied() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "admission-ok").await;
    let api: Api<DynamicObject> = untyped_api(&client, &ns);
    let dir = harness::repo().join("deploy/examples");
    let mut accepted = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path().join("pbx.yaml");
        if !path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.iter().filter(|d| d["kind"] == "WebRtcPbx") {
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            let created = Pbx::new(&name, doc["spec"].clone())
                .try_create_untyped(&api)
                .await
                .unwrap_or_else(|e| panic!("{} rejected: {e}", path.display()));
            // Defaults are the apiserver's job too: the stored object is complete.
            let pbx: WebRtcPbx =
                serde_json::from_value(serde_json::to_value(&created).unwrap()).unwrap();
            // Ports left out stay out: the operator allocates them.
            let asked = doc["spec"]["wss"]["port"].as_i64();
            assert_eq!(pbx.spec.wss.port.map(i64::from), asked);
            assert!(!pbx.spec.image.is_empty());
            accepted += 1;
        }
    }
    assert_eq!(accepted, 4, "every example under deploy/examples");
    // The minimal spec gets every default.
    let minimal = Pbx::new("minimal", json!({"domain": "pbx.example.com"}))
        .try_create_untyped(&api)
        .await
        .unwrap();
    let spec = &minimal.data["spec"];
    assert_eq!(
        spec["rtp"].get("portRange"),
        None,
        "allocated, not defaulted"
    );
    assert_eq!(spec["wss"].get("port"), None, "allocated, not defaulted");
    assert_eq!(spec["network"]["mode"], "HostNetwork");
    assert_eq!(spec["tls"]["mode"], "SelfSigned");
    assert_eq!(spec["sip"]["keepAliveInterval"], "30s");
    assert_eq!(spec["dialplan"]["echoExtension"], "*43");
    assert_eq!(spec["probes"]["echoCall"]["duration"], "10s");
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_what_to_change() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "admission-bad").await;
    let api: Api<DynamicObject> = untyped_api(&client, &ns);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no-domain",
            json!({"domain": null}),
            "spec.domain: Required value",
        ),
        (
            "domain-scheme",
            json!({"domain": "https://pbx.example.com"}),
            "domain must be a lowercase DNS name",
        ),
        (
            "domain-port",
            json!({"domain": "pbx.example.com:8089"}),
            "domain must be a lowercase DNS name",
        ),
        (
            "domain-upper",
            json!({"domain": "PBX.Example.com"}),
            "domain must be a lowercase DNS name",
        ),
        ("domain-empty", json!({"domain": ""}), "spec.domain"),
        (
            "rtp-reversed",
            json!({"rtp": {"portRange": {"start": 20000, "end": 10000}}}),
            "rtp.portRange.start must not be greater than rtp.portRange.end",
        ),
        (
            "rtp-low",
            json!({"rtp": {"portRange": {"start": 80, "end": 10000}}}),
            "should be greater than or equal to 1024",
        ),
        (
            "rtp-high",
            json!({"rtp": {"portRange": {"start": 10000, "end": 70000}}}),
            "should be less than or equal to 65535",
        ),
        (
            "wss-in-rtp",
            json!({"wss": {"port": 15000}, "rtp": {"portRange": {"start": 10000, "end": 20000}}}),
            "wss.port lies inside rtp.portRange",
        ),
        (
            "wss-zero",
            json!({"wss": {"port": 0}}),
            "should be greater than or equal to 1",
        ),
        (
            "ws-equals-wss",
            json!({"wss": {"port": 8089, "wsPort": 8089}}),
            "wss.wsPort equals wss.port",
        ),
        (
            "ws-in-rtp",
            json!({"wss": {"wsPort": 12000}, "rtp": {"portRange": {"start": 10000, "end": 20000}}}),
            "wss.wsPort lies inside rtp.portRange",
        ),
        (
            "service-range",
            json!({"network": {"mode": "Service"}}),
            "a Kubernetes Service cannot carry a port range",
        ),
        (
            "mode-unknown",
            json!({"network": {"mode": "Bridge"}}),
            "Unsupported value: \"Bridge\"",
        ),
        (
            "external-not-ip",
            json!({"network": {"externalAddress": "pbx.example.com"}}),
            "network.externalAddress must be an IP address",
        ),
        (
            "local-not-cidr",
            json!({"network": {"localNetworks": ["10.0.0.0"]}}),
            "network.localNetworks entries must be CIDRs",
        ),
        (
            "duplicate-ext",
            json!({"users": [{"extension": "1001"}, {"extension": "1001"}]}),
            "Duplicate value",
        ),
        (
            "ext-letters",
            json!({"users": [{"extension": "alice"}]}),
            "users[].extension must be 1-16 digits",
        ),
        (
            "ext-missing",
            json!({"users": [{"displayName": "Nobody"}]}),
            "extension: Required value",
        ),
        (
            "echo-is-user",
            json!({"users": [{"extension": "*43"}]}),
            "dialplan.echoExtension is also a user's extension",
        ),
        (
            "echo-letters",
            json!({"dialplan": {"echoExtension": "echo"}}),
            "dialplan.echoExtension must be 1-16 digits",
        ),
        (
            "codec-unknown",
            json!({"users": [{"extension": "1001", "codecs": ["gsm"]}]}),
            "Unsupported value: \"gsm\"",
        ),
        (
            "codecs-empty",
            json!({"users": [{"extension": "1001", "codecs": []}]}),
            "should have at least 1 items",
        ),
        (
            "max-contacts-zero",
            json!({"users": [{"extension": "1001", "maxContacts": 0}]}),
            "should be greater than or equal to 1",
        ),
        (
            "display-quote",
            json!({"users": [{"extension": "1001", "displayName": "a\"b"}]}),
            "must not contain control characters (such as a newline), double quotes",
        ),
        (
            "turn-no-creds",
            json!({"rtp": {"ice": {"turnServers": [{"url": "turn:turn.example.net:3478"}]}}}),
            "turnServers entries need credentialsSecretRef",
        ),
        (
            "turn-bad-url",
            json!({"rtp": {"ice": {"turnServers": [{"url": "http://turn", "credentialsSecretRef": {"name": "t"}}]}}}),
            "turnServers url must look like turn:",
        ),
        (
            "stun-bad",
            json!({"rtp": {"ice": {"stunServers": ["stun.example.net"]}}}),
            "stunServers entries must look like stun:",
        ),
        (
            "tls-secret-no-name",
            json!({"tls": {"mode": "Secret"}}),
            "tls.mode Secret needs tls.secretName",
        ),
        (
            "tls-name-wrong-mode",
            json!({"tls": {"mode": "SelfSigned", "secretName": "x"}}),
            "tls.secretName is only used with tls.mode Secret",
        ),
        (
            "tls-cm-no-issuer",
            json!({"tls": {"mode": "CertManager"}}),
            "tls.mode CertManager needs tls.issuerRef",
        ),
        (
            "tls-issuer-wrong-mode",
            json!({"tls": {"mode": "Secret", "secretName": "x", "issuerRef": {"name": "le"}}}),
            "tls.issuerRef is only used with tls.mode CertManager",
        ),
        (
            "tls-mode-unknown",
            json!({"tls": {"mode": "ACME"}}),
            "Unsupported value: \"ACME\"",
        ),
        (
            "renew-short",
            json!({"tls": {"renewBefore": "10m"}}),
            "tls.renewBefore must be a duration between 1h and 1440h",
        ),
        (
            "keepalive-bad",
            json!({"sip": {"keepAliveInterval": "soon"}}),
            "spec.sip.keepAliveInterval",
        ),
        (
            "keepalive-long",
            json!({"sip": {"keepAliveInterval": "2h"}}),
            "sip.keepAliveInterval must be a duration between 0s and 1h",
        ),
        (
            "interval-short",
            json!({"probes": {"interval": "1s"}}),
            "probes.interval must be a duration between 5s and 24h",
        ),
        (
            "timeout-over-interval",
            json!({"probes": {"interval": "10s", "timeout": "20s"}}),
            "probes.timeout must be shorter than probes.interval",
        ),
        (
            "echo-duration-long",
            json!({"probes": {"echoCall": {"duration": "1h"}}}),
            "probes.echoCall.duration must be a duration between 1s and 10m",
        ),
        (
            "connect-no-port",
            json!({"probes": {"connectAddress": "127.0.0.1"}}),
            "probes.connectAddress must be host:port",
        ),
        (
            "bind-not-ip",
            json!({"wss": {"bindAddress": "any"}}),
            "wss.bindAddress must be an IP address",
        ),
        (
            "service-type",
            json!({"wss": {"service": {"type": "ExternalName"}}}),
            "Unsupported value: \"ExternalName\"",
        ),
        (
            "lb-ip-bad",
            json!({"wss": {"service": {"type": "LoadBalancer", "loadBalancerIP": "lb"}}}),
            "wss.service.loadBalancerIP must be an IP address",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for (name, patch, expected) in cases {
        match Pbx::valid_with(name, patch).try_create_untyped(&api).await {
            Ok(_) => failures.push(format!(
                "{name}: accepted, expected rejection with {expected:?}"
            )),
            Err(e) if e.contains(expected) => {}
            Err(e) => failures.push(format!("{name}: rejected, but without {expected:?}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} admission cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

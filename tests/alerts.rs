//! The chart's alerts (`charts/webrtc-pbx-operator/files/alerts.yaml`),
//! checked and unit tested by promtool (built from the Go module proxy by
//! `scripts/ground provision`): every alert fires in its scenario of
//! `tests/prometheus/alerts_test.yaml` and stays quiet where it should.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

fn promtool(args: &[&str]) -> String {
    harness::require_provisioned();
    let out = Command::new(harness::ground_env("PROMTOOL"))
        .args(args)
        .current_dir(harness::repo())
        .output()
        .expect("run promtool (scripts/ground provision prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(harness::repo().join(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn promtool_accepts_the_rules_and_every_alert_fires_in_its_test() {
    let checked = promtool(&[
        "check",
        "rules",
        "charts/webrtc-pbx-operator/files/alerts.yaml",
    ]);
    let tested = promtool(&["test", "rules", "tests/prometheus/alerts_test.yaml"]);
    eprintln!("{checked}{tested}");
    // Every alert has a runbook and a test in which it fires.
    let rules = yaml("charts/webrtc-pbx-operator/files/alerts.yaml");
    let alerts: BTreeSet<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            let name = r["alert"].as_str().unwrap().to_string();
            let runbook = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
            assert!(runbook.contains("#"), "{name} has no runbook anchor");
            name
        })
        .collect();
    let tests = yaml("tests/prometheus/alerts_test.yaml");
    let fired: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap().iter())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(alerts, fired, "alerts without a test that fires them");
    assert_eq!(alerts.len(), 7, "{alerts:?}");
}

//! A real Prometheus for the tests (`scripts/ground provision prometheus`),
//! on 127.0.0.1, queried over its HTTP API; and a picture of dashboard
//! panels drawn from real query results by headless Chromium.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running Prometheus; stopped (and its data removed) when dropped.
pub struct Prometheus {
    /// `127.0.0.1:PORT` of its web API.
    pub address: String,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with `config` (prometheus.yml text; relative
    /// paths in it are relative to its scratch directory, where `files`
    /// are written first) and waits until it answers.
    pub fn start(name: &str, config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = crate::scratch_dir(name);
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let address = format!("127.0.0.1:{}", crate::free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(crate::ground_env("PROMETHEUS"))
            .current_dir(&dir)
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start prometheus: {e}; provision it: scripts/ground provision prometheus")
            });
        let prometheus = Prometheus {
            address,
            child,
            dir,
        };
        let started = std::time::Instant::now();
        while crate::http_get_at(&prometheus.address, "/-/ready")
            .is_none_or(|r| !r.starts_with("HTTP/1.1 200"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Prometheus did not get ready:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-G"]);
        for (k, v) in params {
            curl.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = curl
            .arg(format!("http://{}{path}", self.address))
            .output()
            .expect("run curl");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{path} {params:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// The instant vector (or scalar as one sample) `expr` evaluates to now.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("/api/v1/query", &[("query", expr.into())]);
        match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            _ => vec![data["result"].clone()],
        }
    }

    /// The range result of `expr` over the last `seconds`, one step each
    /// `step` seconds.
    pub fn query_range(&self, expr: &str, seconds: f64, step: f64) -> Vec<Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let data = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr.into()),
                ("start", format!("{:.3}", now - seconds)),
                ("end", format!("{now:.3}")),
                ("step", format!("{step}")),
            ],
        );
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// What Prometheus says of its scrape targets, for failure messages.
    pub fn targets(&self) -> Value {
        self.api("/api/v1/targets", &[])
    }

    /// Polls `expr` until it has a sample, or fails after `timeout`.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Vec<Value> {
        let started = std::time::Instant::now();
        loop {
            let result = self.query(expr);
            if !result.is_empty() {
                return result;
            }
            assert!(
                started.elapsed() < timeout,
                "{expr} had no data within {timeout:?}; targets: {}",
                self.targets()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One panel of a dashboard picture: its title and each series' points
/// (Unix seconds, value), labelled by its legend.
pub struct Panel {
    /// The panel's title.
    pub title: String,
    /// Its unit as Grafana names it (`s`, `percentunit`, `d`, ...).
    pub unit: String,
    /// (legend, points) per series.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

fn shown(value: f64, unit: &str) -> String {
    match unit {
        "s" => format!("{:.1} ms", value * 1000.0),
        "percentunit" => format!("{:.1} %", value * 100.0),
        "d" => format!("{value:.1} days"),
        "bool_yes_no" | "bool" => (if value >= 1.0 { "yes" } else { "no" }).into(),
        _ => format!("{value:.2}"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A page drawing `panels` (two columns, a line chart and the last value
/// of each series), for [`screenshot`].
pub fn dashboard_page(title: &str, panels: &[Panel]) -> String {
    const COLORS: [&str; 6] = [
        "#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c",
    ];
    let mut html = format!(
        "<!doctype html><meta charset=utf-8><style>body{{background:#111217;color:#ccccdc;font:13px sans-serif;margin:12px}}\
         h1{{font-size:18px;margin:4px 0 10px}}.grid{{display:grid;grid-template-columns:1fr 1fr;gap:8px}}\
         .p{{background:#181b1f;border:1px solid #2c3235;padding:8px}}.t{{font-weight:bold;margin-bottom:4px}}\
         .l{{font-size:11px;white-space:nowrap;overflow:hidden}}</style><h1>{}</h1><div class=grid>",
        escape(title)
    );
    // One time axis for every panel, as on a dashboard.
    let (t0, t1) = panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(|(_, s)| s))
        .fold((f64::MAX, f64::MIN), |(a, b), (t, _)| {
            (a.min(*t), b.max(*t))
        });
    for panel in panels {
        let points: Vec<&(f64, f64)> = panel.series.iter().flat_map(|(_, p)| p).collect();
        let (v0, v1) = points
            .iter()
            .fold((0.0_f64, f64::MIN), |(a, b), (_, v)| (a.min(*v), b.max(*v)));
        let v1 = if v1 <= v0 { v0 + 1.0 } else { v1 * 1.1 };
        let span = if t1 > t0 { t1 - t0 } else { 1.0 };
        html.push_str(&format!(
            "<div class=p><div class=t>{}</div><svg width=600 height=110 style='background:#0b0c0e'>",
            escape(&panel.title)
        ));
        for (i, (_, series)) in panel.series.iter().enumerate() {
            let line: Vec<String> = series
                .iter()
                .map(|(t, v)| {
                    format!(
                        "{:.1},{:.1}",
                        (t - t0) / span * 596.0 + 2.0,
                        106.0 - (v - v0) / (v1 - v0) * 100.0
                    )
                })
                .collect();
            html.push_str(&format!(
                "<polyline fill=none stroke='{}' stroke-width=2 points='{}'/>",
                COLORS[i % COLORS.len()],
                line.join(" ")
            ));
        }
        html.push_str("</svg>");
        for (i, (legend, series)) in panel.series.iter().enumerate().take(6) {
            let last = series
                .last()
                .map_or("-".into(), |(_, v)| shown(*v, &panel.unit));
            html.push_str(&format!(
                "<div class=l><span style='color:{}'>&#9632;</span> {} <b>{last}</b></div>",
                COLORS[i % COLORS.len()],
                escape(legend)
            ));
        }
        if panel.series.is_empty() {
            html.push_str("<div class=l>no data</div>");
        }
        html.push_str("</div>");
    }
    html.push_str("</div>");
    html
}

/// Renders `html` to a PNG of `width` x `height` with headless Chromium,
/// inside a test host of its own (so it sends nothing anywhere).
pub fn screenshot(html: &str, png: &Path, width: u32, height: u32) {
    let dir = crate::scratch_dir("screenshot");
    let page = dir.join("page.html");
    std::fs::write(&page, html).unwrap();
    let host = crate::Netns::new("shot");
    let out = host
        .command(crate::ground_env("CHROMIUM"))
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium (scripts/ground provision browser)");
    assert!(
        png.exists(),
        "no screenshot from chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

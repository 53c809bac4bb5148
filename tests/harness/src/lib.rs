//! The test harness on the real ground (`scripts/ground`), a development-only
//! crate of the workspace shared by the tests and the benchmark: one control
//! plane per test binary, one namespace per test, real Asterisk processes from the
//! chroot. Nothing is mocked; a missing ground fails the test and says how to
//! provision it. Teardown is by watchdogs keyed to the test binary's PID, so
//! a panic or a kill leaks neither processes nor mounts.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use webrtc_pbx_operator::probe::transport::{self, Target, Wss, WssFailure};

pub mod fixture;
pub mod inprocess;
pub mod prometheus;

/// The repository root, as cargo tells the running test. Not `env!`: one
/// target dir serves every checkout, and cargo may reuse a test binary built
/// in another clone, whose compile-time path would lead there.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn ground_script() -> PathBuf {
    repo().join("scripts/ground")
}

/// Fails the test unless the ground is provisioned, saying how to fix it.
pub fn require_provisioned() {
    let out = Command::new(ground_script())
        .arg("check")
        .output()
        .expect("run scripts/ground check");
    assert!(
        out.status.success(),
        "{}\nThis test needs the real test ground (Kubernetes control plane and Asterisk 22).\n\
         Provision it once with: scripts/ground provision   (cached under ~/.cache/webrtc-pbx-operator)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A value of `scripts/ground env`.
pub fn ground_env(key: &str) -> String {
    let out = Command::new(ground_script())
        .arg("env")
        .output()
        .expect("run scripts/ground env");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("scripts/ground env has no {key}"))
}

/// A running control plane.
pub struct ControlPlane {
    /// State directory of `scripts/ground up`.
    pub dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The real node, when this binary asked for one ([`real_node`]).
    pub node: Option<Node>,
}

/// The ground's real node: kubelet, containerd, kube-proxy and CoreDNS in
/// a test host (network namespace) of their own (`scripts/ground up`).
pub struct Node {
    /// The Node object's name.
    pub name: String,
    /// Its network namespace: host-network pods live here.
    pub netns: String,
    /// Its InternalIP (the node's end of its link to this host).
    pub ip: String,
    /// containerd's socket (for `ctr`).
    pub containerd_sock: PathBuf,
}

impl Node {
    /// `ctr -n k8s.io` against the node's containerd (arguments to add).
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(ground_env("CTR"));
        c.arg("--address")
            .arg(&self.containerd_sock)
            .args(["-n", "k8s.io"]);
        c
    }

    /// A command run in the node's network namespace (where host-network
    /// pods listen), e.g. `nft` or a browser.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_command(&self.netns, program)
    }

    /// Drops UDP to `ports` (e.g. "10000-20000") arriving at the node: closed
    /// RTP ports, as a firewall in front of a host-network PBX has them.
    pub fn drop_udp(&self, ports: &str) {
        nft_drop_udp(|| self.command("nft"), ports);
    }

    /// Removes what [`Node::drop_udp`] added.
    pub fn allow_all(&self) {
        nft_allow_all(|| self.command("nft"));
    }
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();
static WITH_NODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The real node of this test binary's ground: the ground is started with
/// one (and no kwok nodes) when this is called before anything else.
pub fn real_node() -> &'static Node {
    WITH_NODE.store(true, Ordering::SeqCst);
    control_plane()
        .node
        .as_ref()
        .expect("this binary's ground was started without a real node (call real_node() first)")
}

/// The control plane of this test binary, started on first use and torn down
/// by a watchdog when the binary exits. Without [`real_node`], kwok nodes
/// only (fast, for the operator's own tests and the benchmarks).
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        require_provisioned();
        let with_node = WITH_NODE.load(Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("webrtc-pbx-ground.test-{}", std::process::id()));
        let mut up = Command::new(ground_script());
        up.args(["up", "--dir"])
            .arg(&dir)
            .args(["--watch-pid", &std::process::id().to_string()]);
        if with_node {
            // The real node runs what the chart and the operator name.
            require_image("operator");
        } else {
            // Several nodes: HostNetwork PBXs of concurrent tests each need a
            // node of their own for their host ports.
            up.args(["--no-node", "--nodes", "8"]);
        }
        let out = up
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/ground up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "scripts/ground up failed: {stdout}");
        let kubeconfig = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("export KUBECONFIG="))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("scripts/ground up did not print KUBECONFIG: {stdout}"));
        let node = with_node.then(|| {
            let env = std::fs::read_to_string(dir.join("node/env")).expect("the node's env file");
            let get = |key: &str| {
                env.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .unwrap_or_else(|| panic!("node/env has no {key}"))
                    .to_string()
            };
            Node {
                name: get("NODE_NAME"),
                netns: get("NODE_NETNS"),
                ip: get("NODE_IP"),
                containerd_sock: PathBuf::from(get("CONTAINERD_SOCK")),
            }
        });
        ControlPlane {
            dir,
            kubeconfig,
            node,
        }
    })
}

/// Fails unless image `name` has been built (`scripts/images build NAME`).
pub fn require_image(name: &str) {
    let tar = PathBuf::from(ground_env("IMAGES_DIR")).join(format!("{name}.tar"));
    assert!(
        tar.exists(),
        "{} is missing: this test runs the project's own images on the real node.\n\
         Build it with: scripts/images build {name}   (scripts/test does this before the tests)",
        tar.display()
    );
}

/// `kubectl ARGS` as this binary's ground admin; fails the test on a
/// non-zero exit.
pub fn kubectl(args: &[&str]) -> String {
    kubectl_at(&control_plane().kubeconfig, args)
}

/// `kubectl ARGS` with `kubeconfig` (another ground's); fails the test on a
/// non-zero exit.
pub fn kubectl_at(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(ground_env("KUBECTL"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm install` of the chart, with its default values and the ground's
/// imported images, into `ns` as release `release`; waits until the
/// operator's pods are Ready. As a user installs it.
pub fn install_chart(release: &str, ns: &str) {
    let took = helm_chart(&["install", release, "--create-namespace"], ns, &[]);
    eprintln!(
        "helm install {release} (the chart, default values) -> operator pods Ready {:.1} s",
        took.as_secs_f64()
    );
}

/// `helm VERB... CHART --namespace ns --wait ... SETTINGS` with the chart of
/// this checkout (`install RELEASE`, `upgrade RELEASE --reuse-values`, ...);
/// fails the test unless helm succeeds; returns the time it took (until
/// the operator's pods are Ready).
pub fn helm_chart(verb: &[&str], ns: &str, settings: &[&str]) -> Duration {
    let started = Instant::now();
    let out = Command::new(ground_env("HELM"))
        .arg("--kubeconfig")
        .arg(&control_plane().kubeconfig)
        .args(verb)
        .arg(repo().join("charts/webrtc-pbx-operator"))
        .args(["--namespace", ns, "--wait", "--timeout", "180s"])
        .args(settings)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {verb:?}: {}{}\npods:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        kubectl(&["get", "pods", "-A", "-o", "wide"])
    );
    started.elapsed()
}

/// The Unix time, in seconds, of an `Instant` in the past.
pub fn unix_seconds_at(at: Instant) -> i64 {
    let then = std::time::SystemTime::now() - at.elapsed();
    let since = then.duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

/// GET http://`addr``path` (an operator pod's metrics endpoint).
pub fn http_get_at(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Kills one component of this binary's control plane (`etcd`,
/// `kube-apiserver`, ...) with SIGKILL, keeps it down for `down`, and starts
/// it again the same way (`scripts/ground restart`).
pub fn restart_component(name: &str, down: Duration) {
    let out = Command::new(ground_script())
        .args(["restart", name, "--dir"])
        .arg(&control_plane().dir)
        .args(["--down", &format!("{:.1}", down.as_secs_f64())])
        .output()
        .expect("scripts/ground restart");
    assert!(
        out.status.success(),
        "restart {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client for the control plane (one per test: clients belong to a runtime).
pub async fn client() -> Client {
    let cp = control_plane();
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// True in the RBAC pass of `scripts/test` (`WPBX_TEST_AS_CHART_SA=1`): the
/// operator under test runs as the chart's own ServiceAccount, with exactly
/// the chart's RBAC, so a missing rule fails the tests.
pub fn as_chart_service_account() -> bool {
    std::env::var_os("WPBX_TEST_AS_CHART_SA").is_some()
}

/// The user the operator under test acts as in namespace `ns`: the admin
/// (`None`), or in the RBAC pass the chart's ServiceAccount, installed into
/// `ns` (release name `ns`) from `helm template` of the chart's ServiceAccount
/// and RBAC templates.
pub fn operator_user(ns: &str) -> Option<String> {
    as_chart_service_account().then(|| install_chart_rbac(ns))
}

/// Installs the chart's ServiceAccount and RBAC into `ns` (release `ns`);
/// returns the ServiceAccount's user name.
pub fn install_chart_rbac(ns: &str) -> String {
    let chart = repo().join("charts/webrtc-pbx-operator");
    let rendered = Command::new(ground_env("HELM"))
        .args(["template", ns])
        .arg(&chart)
        .args(["--namespace", ns])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/rbac.yaml"])
        .output()
        .expect("helm template");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let mut apply = Command::new(ground_env("KUBECTL"))
        .arg("--kubeconfig")
        .arg(&control_plane().kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("kubectl apply");
    std::io::Write::write_all(&mut apply.stdin.take().unwrap(), &rendered.stdout).unwrap();
    assert!(apply.wait().unwrap().success(), "applying the chart's RBAC");
    let user = format!("system:serviceaccount:{ns}:{ns}-webrtc-pbx-operator");
    // The apiserver's authorizer learns new bindings from its own watch, a
    // moment after they are written: until then the ServiceAccount is
    // refused (403), and an operator started at once fails its first
    // request (a leader election that never starts). In a cluster its pod
    // starts long after. One rule of each binding (the Lease Role, the
    // operator's role) is asked until both answer yes.
    let can = |verb: &str, resource: &str| {
        Command::new(ground_env("KUBECTL"))
            .arg("--kubeconfig")
            .arg(&control_plane().kubeconfig)
            .args(["auth", "can-i", verb, resource, "-n", ns, "--as", &user])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let started = Instant::now();
    while !(can("patch", "leases.coordination.k8s.io") && can("list", "webrtcpbxes.pbx.webrtc.io"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the chart's RBAC for {user} not in effect within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    user
}

/// A client for the operator under test in namespace `ns` (see [`operator_user`]).
pub async fn operator_client(ns: &str) -> Client {
    match operator_user(ns) {
        Some(user) => client_as(&user).await,
        None => client().await,
    }
}

/// A client impersonating `user`.
pub async fn client_as(user: &str) -> Client {
    let cp = control_plane();
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).expect("client")
}

static NAMESPACE_SEQ: AtomicU32 = AtomicU32::new(0);

/// Creates a fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NAMESPACE_SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Installs a CRD (server-side apply) and waits until it is Established.
pub async fn install_crd(client: &Client, crd: &CustomResourceDefinition) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("webrtc-pbx-tests").force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
    wait_until(
        Duration::from_secs(30),
        &format!("CRD {name} Established"),
        || async {
            let crd = api.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// Installs prometheus-operator's PodMonitor, ServiceMonitor and
/// PrometheusRule CRDs (`scripts/ground provision monitoring-crds`).
pub async fn install_monitoring_crds(client: &Client) {
    let dir = PathBuf::from(ground_env("MONITORING_CRDS"));
    for kind in ["podmonitors", "servicemonitors", "prometheusrules"] {
        let path = dir.join(format!("monitoring.coreos.com_{kind}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; provision it: scripts/ground provision monitoring-crds",
                path.display()
            )
        });
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        install_crd(client, &crd).await;
    }
}

/// Installs the committed CRDs from `crds/`.
pub async fn install_project_crds(client: &Client) {
    let dir = repo().join("crds");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        install_crd(client, &crd).await;
    }
}

/// Polls `check` until it returns `Some`, or fails the test after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator binary Cargo built with this test or benchmark.
pub fn operator_exe() -> PathBuf {
    // Cargo sets CARGO_BIN_EXE_* for the operator crate's own test targets,
    // not for this crate; cargo builds the binary for them beside `deps/`,
    // where the test executable runs from.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("webrtc-pbx-operator")
}

/// The operator's `probe` command in `netns` against a test PBX for
/// `domain` on 127.0.0.1:`port`, trusting the CA in `ca_file`, its report
/// as JSON, 3 s per step; the caller adds what to check.
pub fn probe_in(netns: &Netns, domain: &str, port: u16, ca_file: &Path) -> Command {
    let mut c = netns.command(operator_exe());
    c.args(["probe", "--url", &format!("wss://{domain}:{port}/ws")])
        .args(["--connect-to", &format!("127.0.0.1:{port}")])
        .arg("--ca-file")
        .arg(ca_file)
        .args(["--output", "json", "--timeout", "3s"]);
    c
}

/// The JSON report a `probe` command printed (a failed probe prints it
/// too); its output in the panic when there is none.
pub fn probe_json(out: std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The operator binary (`run`) for namespace `ns`, serving metrics on
/// 127.0.0.1:`metrics_port`, as [`operator_user`]; its log goes to `log` (or nowhere).
pub fn operator_binary(ns: &str, metrics_port: u16, log: Option<&Path>) -> Operator {
    let level = if log.is_some() { "info" } else { "warn" };
    operator_binary_with(ns, metrics_port, log, &[], level)
}

/// The environment image `name` sets (deploy/images/NAME/image.env,
/// `CONFIG.Env`) besides PATH and the CA file: what the process runs with
/// in a pod, so a test runs it the same way.
pub fn image_env(name: &str) -> Vec<(String, String)> {
    let path = repo().join(format!("deploy/images/{name}/image.env"));
    let text = std::fs::read_to_string(&path).unwrap();
    let config = text
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG='")?.strip_suffix('\''))
        .unwrap_or_else(|| panic!("{}: no CONFIG", path.display()));
    let config: serde_json::Value = serde_json::from_str(config).unwrap();
    config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.split_once('='))
        .filter(|(k, _)| !matches!(*k, "PATH" | "SSL_CERT_FILE"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// [`operator_binary`] with more `run` arguments and a log filter.
pub fn operator_binary_with(
    ns: &str,
    metrics_port: u16,
    log: Option<&Path>,
    args: &[&str],
    rust_log: &str,
) -> Operator {
    let user = operator_user(ns);
    let out = || match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    // WPBX_OPERATOR_HEAPTRACK=DIR: heaptrack's raw record of each operator
    // process, DIR/operator-PORT.raw (`heaptrack_interpret` reads it); the
    // bench's figures for such a run are not comparable.
    let heaptrack = std::env::var("WPBX_OPERATOR_HEAPTRACK")
        .ok()
        .map(|dir| {
            [
                (
                    "LD_PRELOAD",
                    "/usr/lib/heaptrack/libheaptrack_preload.so".to_string(),
                ),
                (
                    "DUMP_HEAPTRACK_OUTPUT",
                    format!("{dir}/operator-{metrics_port}.raw"),
                ),
            ]
        })
        .into_iter()
        .flatten();
    let child = Command::new(operator_exe())
        .args(["run", "--namespace", ns, "--lease-namespace", ns])
        .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("RUST_LOG", rust_log)
        .envs(image_env("operator"))
        .envs(user.map(|u| ("KUBE_RS_DEBUG_IMPERSONATE_USER", u)))
        .envs(heaptrack)
        .stdout(out())
        .stderr(out())
        .spawn()
        .unwrap();
    // Killed with the test even when the test itself is killed.
    let watchdog = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null",
        std::process::id(),
        child.id()
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    Operator(child)
}

/// A running operator binary, killed on drop (also when a test panics).
pub struct Operator(Child);

impl Operator {
    /// SIGKILL.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    /// Reaps it.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    /// Its process ID.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator's API requests by (method, resource), from its own counter.
pub type Requests = std::collections::BTreeMap<(String, String), u64>;

/// [`Requests`] as the operator's metrics endpoint on `port` reports them.
pub fn api_requests(port: u16) -> Requests {
    http_get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("webrtc_pbx_api_requests_total{method=\""))
        .filter_map(|l| {
            let (method, rest) = l.split_once('"')?;
            let resource = rest.strip_prefix(",resource=\"")?.split('"').next()?;
            let count = rest.rsplit(' ').next()?.parse().ok()?;
            Some(((method.to_string(), resource.to_string()), count))
        })
        .collect()
}

/// Reconciles the operator on `port` started, from its own counter.
pub fn reconciles(port: u16) -> u64 {
    http_get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("webrtc_pbx_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// GET http://127.0.0.1:`port``path` (the operator's metrics endpoint).
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_at(&format!("127.0.0.1:{port}"), path)
}

/// `webrtc-pbx-operator render MANIFEST --config-dir DIR`, as users run it.
pub fn render_to_dir(manifest: &Path, dir: &Path) -> std::process::Output {
    Command::new(operator_exe())
        .arg("render")
        .arg(manifest)
        .arg("--config-dir")
        .arg(dir)
        .output()
        .expect("run webrtc-pbx-operator render")
}

/// Server-side applies `object` (JSON of a `K`) in `ns` as field manager `test`.
pub async fn apply_json<K>(client: &Client, ns: &str, object: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
}

/// Waits up to 60 s until `name`'s `type_` condition has `status` (and
/// `reason`, when given); returns its message.
pub async fn wait_for_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> String {
    wait_until(
        Duration::from_secs(60),
        &format!("{name}: {type_}={status} ({reason:?})"),
        || async {
            let (s, why, message) = condition(client, ns, name, type_).await?;
            (s == status && reason.is_none_or(|want| want == why)).then_some(message)
        },
    )
    .await
}

/// A condition of WebRtcPbx `name`: (status, reason, message).
pub async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let api: Api<webrtc_pbx_operator::api::WebRtcPbx> = Api::namespaced(client.clone(), ns);
    let c = api
        .get_opt(name)
        .await
        .ok()??
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

/// Writes the rendered config of a PBX for `domain` with WSS on
/// 127.0.0.1:`port`, user 1001 (password pw-1001) and `extra_users` (YAML
/// list items, passwords pw-EXTENSION); returns its etc/asterisk.
pub fn render_config(dir: &Path, domain: &str, port: u16, extra_users: &str) -> PathBuf {
    use webrtc_pbx_operator::validate::{self, Generated, Referenced};
    use webrtc_pbx_operator::{cli, render};
    let input = dir.join("pbx.yaml");
    std::fs::write(
        &input,
        format!(
            "apiVersion: pbx.webrtc.io/v1alpha1\nkind: WebRtcPbx\nmetadata: {{name: p, namespace: v}}\n\
             spec:\n  domain: {domain}\n  wss: {{port: {port}, bindAddress: 127.0.0.1}}\n  users:\n    - {{extension: \"1001\"}}\n{extra_users}"
        ),
    )
    .unwrap();
    let inputs = cli::read_inputs(&[input]).unwrap();
    let generated = Generated {
        user_passwords: inputs.pbxes[0]
            .spec
            .users
            .iter()
            .map(|u| (u.extension.clone(), format!("pw-{}", u.extension)))
            .collect(),
        probe_password: "probe-pw".into(),
        metrics_password: "metrics-pw".into(),
        // Used only where the manifest enables probes.userCall.
        callee_password: "callee-pw".into(),
        ports: webrtc_pbx_operator::allocate::place_all(&Default::default(), &inputs.pbxes)
            .remove(0),
    };
    let validated =
        validate::validate(&inputs.pbxes[0], &Referenced::default(), &generated).unwrap();
    cli::write_config_dir(dir, &render::render(&validated), None).unwrap();
    dir.join("etc/asterisk")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wpbx-{name}-{}-{}",
        std::process::id(),
        NAMESPACE_SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes a scratch directory, waiting briefly for processes that were
/// killed but are still letting go of files in it.
pub fn remove_dir(dir: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot remove {}", dir.display());
}

/// Appends to the rendered rtp.conf in `etc` the ICE host-candidate
/// mapping of [`Netns::MEDIA_ADDRESS`] to `mapping`: Asterisk offers a test
/// host's non-loopback address, and media must stay inside the host.
pub fn map_media_address(etc: &Path, mapping: &str) {
    let path = etc.join("rtp.conf");
    let mut rtp = std::fs::read_to_string(&path).unwrap();
    rtp.push_str(&format!(
        "\n[ice_host_candidates]\n{} => {mapping}\n",
        Netns::MEDIA_ADDRESS
    ));
    std::fs::write(path, rtp).unwrap();
}

/// A self-signed certificate and key (PEM) for `names`, written as
/// tls.crt / tls.key / ca.crt into `keys_dir`.
pub fn write_self_signed(keys_dir: &Path, names: &[&str]) -> String {
    let cert =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("generate certificate");
    std::fs::create_dir_all(keys_dir).unwrap();
    let pem = cert.cert.pem();
    std::fs::write(keys_dir.join("tls.crt"), &pem).unwrap();
    std::fs::write(keys_dir.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(keys_dir.join("ca.crt"), &pem).unwrap();
    pem
}

/// A real Asterisk 22 from the chroot, killed on drop.
pub struct Asterisk {
    child: Child,
    /// Per-instance run/log/spool directories.
    pub state: PathBuf,
    /// Combined stdout and stderr of Asterisk.
    pub log: PathBuf,
    /// Its /etc/asterisk.
    pub etc: PathBuf,
}

impl Asterisk {
    /// Starts Asterisk with `etc` as /etc/asterisk. Returns once the process
    /// runs; use [`Asterisk::wait_wss`] to wait for the WebSocket server.
    pub fn start(etc: &Path) -> Asterisk {
        Self::start_in(etc, None)
    }

    /// Like [`Asterisk::start`], inside network namespace `netns`.
    pub fn start_in(etc: &Path, netns: Option<&Netns>) -> Asterisk {
        require_provisioned();
        let state = etc.parent().unwrap().join(format!(
            "state-{}",
            NAMESPACE_SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&state).unwrap();
        let log = state.join("asterisk.out");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(ground_script())
            .args(["asterisk", "--etc"])
            .arg(etc)
            .arg("--state")
            .arg(&state)
            .args(["--watch-pid", &std::process::id().to_string()])
            .args(
                netns
                    .map(|n| vec!["--netns".to_string(), n.name.clone()])
                    .unwrap_or_default(),
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start scripts/ground asterisk");
        Asterisk {
            child,
            state,
            log,
            etc: etc.to_path_buf(),
        }
    }

    /// The process ID (the script execs into Asterisk).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops Asterisk (SIGSTOP) and returns once every thread is stopped. The
    /// kernel starts a group stop only when one thread takes the signal, so
    /// on a busy machine the other threads could otherwise still answer.
    pub fn freeze(&self) {
        self.signal("-STOP");
        let tasks = format!("/proc/{}/task", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states: Vec<char> = std::fs::read_dir(&tasks)
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                // The state follows the command name in parentheses.
                .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
                .collect();
            if !states.is_empty() && states.iter().all(|c| *c == 'T' || *c == 't') {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Asterisk threads not stopped: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resumes Asterisk after [`Asterisk::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {}", self.pid());
    }

    /// What Asterisk printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a CLI command through the control socket (`asterisk -rx`).
    pub fn cli(&self, command: &str) -> String {
        let root = ground_env("ASTERISK_ROOT");
        // The control socket lives in the instance's run dir; reach it from
        // the chroot through a private bind like the server's.
        let script = format!(
            "mount --bind '{}' '{root}/run/asterisk' && exec chroot '{root}' /usr/sbin/asterisk -rx \"$0\"",
            self.state.join("run").display()
        );
        let out = Command::new("unshare")
            .args(["--mount", "sh", "-c", &script, command])
            .output()
            .expect("asterisk -rx");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Waits until `wss://127.0.0.1:port/ws` answers 101 with subprotocol
    /// `sip` (an open TLS port alone is not ready: `/ws` answers 400 for a
    /// moment) and Asterisk is fully booted. Returns how long it took since
    /// `since`.
    pub async fn wait_wss(
        &mut self,
        port: u16,
        server_name: &str,
        ca_pem: &str,
        since: Instant,
    ) -> Duration {
        let deadline = Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Asterisk exited ({status}) before WSS was ready:\n{}",
                    self.output()
                );
            }
            if let Ok((101, Some(p))) = ws_upgrade(port, "/ws", server_name, ca_pem).await
                && p == "sip"
            {
                // WSS answers before Asterisk is fully booted, and SIP
                // requests are ignored until then: wait for both.
                self.cli("core waitfullybooted");
                return since.elapsed();
            }
            assert!(
                since.elapsed() < deadline,
                "WSS on port {port} not ready after {deadline:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until Asterisk is fully booted (through its control socket,
    /// which works across network namespaces).
    pub fn wait_booted(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Asterisk exited ({status}):\n{}", self.output());
            }
            if self.state.join("run/asterisk.ctl").exists()
                && !self
                    .cli("core waitfullybooted")
                    .contains("Unable to connect")
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "Asterisk not booted:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Asterisk (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test host: a network namespace with its own loopback, which also
/// carries [`Netns::MEDIA_ADDRESS`] (Asterisk never offers loopback as an ICE
/// candidate; rtp.conf maps that address back to 127.0.0.1). Deleted on drop,
/// and by a watchdog if the test binary dies.
pub struct Netns {
    /// The namespace name.
    pub name: String,
    /// The link to the host, when made with [`Netns::linked`].
    pub link: Option<Link>,
}

/// A veth pair between the host and a test host: a real interface, so
/// Asterisk offers its address as an ICE candidate without any mapping.
pub struct Link {
    /// The host side's address.
    pub host: String,
    /// The test host's address (its `eth0`).
    pub inside: String,
}

impl Netns {
    /// The extra address on the namespace's loopback.
    pub const MEDIA_ADDRESS: &'static str = "10.255.0.1";

    /// Creates the namespace.
    pub fn new(prefix: &str) -> Netns {
        let name = format!(
            "wpbx-{prefix}-{}-{}",
            std::process::id(),
            NAMESPACE_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/32", Self::MEDIA_ADDRESS),
            "dev",
            "lo",
        ]);
        let watchdog = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; ip netns del {name} 2>/dev/null",
            std::process::id()
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        Netns { name, link: None }
    }

    /// A test host linked to the host by a veth pair on a /30 of
    /// 10.254.0.0/16. It has no other route, so nothing it runs (Asterisk's
    /// STUN lookups, a browser's background requests) can leave the machine.
    pub fn linked(prefix: &str) -> Netns {
        let mut netns = Netns::new(prefix);
        let index =
            (std::process::id() * 64 + NAMESPACE_SEQ.fetch_add(1, Ordering::SeqCst)) % 16384;
        let base = |last: u32| format!("10.254.{}.{}", index / 64, (index % 64) * 4 + last);
        let (host, inside) = (base(1), base(2));
        let device = format!("wpbx{index}");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&[
            "link",
            "add",
            &device,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &device]);
        ip(&["link", "set", &device, "up"]);
        ip(&[
            "-n",
            &netns.name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns.name, "link", "set", "eth0", "up"]);
        netns.link = Some(Link { host, inside });
        netns
    }

    /// Drops UDP packets to `ports` (e.g. "10000-20000") inside the
    /// namespace: closed RTP ports, as a firewall would have them.
    pub fn drop_udp(&self, ports: &str) {
        nft_drop_udp(|| self.command("nft"), ports);
    }

    /// Drops `percent` % of the UDP packets arriving in the namespace, at
    /// random (nftables `numgen`; this kernel has no netem): random loss on
    /// both legs of a call whose ends are both inside.
    pub fn lose_udp(&self, percent: u8) {
        let below = percent.to_string();
        nft_input_rule(
            || self.command("nft"),
            &[
                "meta", "l4proto", "udp", "numgen", "random", "mod", "100", "<", &below, "drop",
            ],
        );
    }

    /// Limits the namespace's loopback to `kbit` kbit/s with a queue of up
    /// to `queue_ms` (tbf): a bottleneck whose queue first delays packets,
    /// then drops them. The only way this kernel adds latency (it has no
    /// netem, fq or etf); so the delay comes with some loss.
    pub fn bottleneck(&self, kbit: u32, queue_ms: u32) {
        let out = self
            .command("tc")
            .args(["qdisc", "replace", "dev", "lo", "root", "tbf", "rate"])
            .arg(format!("{kbit}kbit"))
            .args(["burst", "2kb", "latency"])
            .arg(format!("{queue_ms}ms"))
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Removes what [`Netns::bottleneck`] added.
    pub fn unlimit(&self) {
        let _ = self
            .command("tc")
            .args(["qdisc", "del", "dev", "lo", "root"])
            .output();
    }

    /// Drops RTP and RTCP (UDP whose payload starts with RTP version 2)
    /// sent to `address` inside the namespace; STUN and DTLS still pass:
    /// a call whose media connects and then flows one way only.
    pub fn drop_rtp_to(&self, address: &str) {
        nft_input_rule(
            || self.command("nft"),
            &[
                "ip", "daddr", address, "meta", "l4proto", "udp", "@th,64,2", "2", "drop",
            ],
        );
    }

    /// Removes what [`Netns::drop_udp`], [`Netns::lose_udp`] and
    /// [`Netns::drop_rtp_to`] added.
    pub fn allow_all(&self) {
        nft_allow_all(|| self.command("nft"));
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_command(&self.name, program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `program` run in network namespace `netns` (`ip netns exec`).
fn netns_command(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).arg(program);
    c
}

/// Adds table `inet wpbx` dropping UDP to `ports` on input, with the `nft`
/// commands `nft` makes (in some network namespace).
fn nft_drop_udp(nft: impl Fn() -> Command, ports: &str) {
    nft_input_rule(nft, &["udp", "dport", ports, "drop"]);
}

/// Adds `rule` to an input chain of a `wpbx` table (made when missing).
fn nft_input_rule(nft: impl Fn() -> Command, rule: &[&str]) {
    let run = |args: &[&str]| {
        let out = nft().args(args).output().expect("run nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["add", "table", "inet", "wpbx"]);
    run(&[
        "add",
        "chain",
        "inet",
        "wpbx",
        "input",
        "{ type filter hook input priority 0; }",
    ]);
    let mut add = vec!["add", "rule", "inet", "wpbx", "input"];
    add.extend(rule);
    run(&add);
}

/// Removes what [`nft_drop_udp`] added.
fn nft_allow_all(nft: impl Fn() -> Command) {
    let out = nft()
        .args(["delete", "table", "inet", "wpbx"])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A probe target for Asterisk on 127.0.0.1:`port`, checking the
/// certificate against `server_name` and `ca_pem`.
pub fn target(port: u16, path: &str, server_name: &str, ca_pem: &str) -> Target {
    Target {
        url: url::Url::parse(&format!("wss://{server_name}:{port}{path}")).unwrap(),
        connect_to: Some(format!("127.0.0.1:{port}")),
        ca_pem: Some(ca_pem.to_string()),
        insecure: false,
        timeout: Duration::from_secs(5),
    }
}

/// REGISTERs as `user` (with `password`) at `ip`:`port` for `domain`
/// through the probe engine, accepting any certificate, each phase given
/// `timeout`: a PBX on a node or pod address, checked as a client would.
pub async fn register_at(
    ip: &str,
    port: u16,
    domain: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> webrtc_pbx_operator::probe::Report {
    webrtc_pbx_operator::probe::run(&request_at(ip, port, domain, user, password, timeout)).await
}

/// As [`register_at`], then an echo call to `*43` of `seconds`, its media
/// from the local address that routes to `ip`.
pub async fn echo_at(
    ip: &str,
    port: u16,
    domain: &str,
    user: &str,
    password: &str,
    seconds: u64,
) -> webrtc_pbx_operator::probe::Report {
    let timeout = Duration::from_secs(5);
    let mut request = request_at(ip, port, domain, user, password, timeout);
    let media_ip = webrtc_pbx_operator::probe::transport::route_source(&format!("{ip}:{port}"))
        .expect("a local address towards the PBX");
    request.echo = Some(webrtc_pbx_operator::probe::echo::EchoOptions {
        extension: "*43".into(),
        duration: Duration::from_secs(seconds),
        timeout,
        media_ip,
        max_loss_percent: 5.0,
        max_rtt_ms: 400.0,
        min_mos: 1.0,
    });
    webrtc_pbx_operator::probe::run(&request).await
}

/// The probe user's password of PBX `name`, from its `NAME-asterisk`
/// Secret (what the operator's probe registers with).
pub async fn probe_password(client: &Client, ns: &str, name: &str) -> String {
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .get(&format!("{name}-asterisk"))
        .await
        .unwrap();
    let key = webrtc_pbx_operator::names::PROBE_PASSWORD_KEY;
    String::from_utf8(secret.data.unwrap()[key].0.clone()).unwrap()
}

/// The WSS port and RTP range PBX `name` holds, as its status shows them
/// (allocated by the operator when its spec leaves them out).
pub async fn host_ports(
    client: &Client,
    ns: &str,
    name: &str,
) -> (u16, webrtc_pbx_operator::api::PortRange) {
    let pbx = Api::<webrtc_pbx_operator::api::WebRtcPbx>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let e = pbx.status.unwrap().endpoints.unwrap();
    (
        u16::try_from(e.wss_port.unwrap()).unwrap(),
        e.rtp_port_range.unwrap(),
    )
}

/// The probe request of [`register_at`].
fn request_at(
    ip: &str,
    port: u16,
    domain: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> webrtc_pbx_operator::probe::Request {
    webrtc_pbx_operator::probe::Request {
        target: Target {
            url: url::Url::parse(&format!("wss://{domain}:{port}/ws")).unwrap(),
            connect_to: Some(format!("{ip}:{port}")),
            ca_pem: None,
            insecure: true,
            timeout,
        },
        account: Some(webrtc_pbx_operator::probe::register::Account {
            domain: domain.into(),
            user: user.into(),
            password: password.into(),
        }),
        echo: None,
        user_call: None,
        metrics: None,
    }
}

/// SHA-256 fingerprint of the certificate served on `ip`:`port` for
/// `domain` (openssl's line; empty when nothing answers).
pub fn served_certificate(ip: &str, port: u16, domain: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {ip}:{port} -servername {domain} </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Opens the SIP WebSocket with the probe engine's transport.
pub async fn wss_connect(
    port: u16,
    path: &str,
    server_name: &str,
    ca_pem: &str,
) -> Result<Wss, WssFailure> {
    transport::connect(&target(port, path, server_name, ca_pem))
        .await
        .map(|(ws, _, _)| ws)
        .map_err(|(f, _)| f)
}

/// The HTTP status of a `sip` WebSocket upgrade and the subprotocol echoed.
pub async fn ws_upgrade(
    port: u16,
    path: &str,
    server_name: &str,
    ca_pem: &str,
) -> Result<(u16, Option<String>), String> {
    match wss_connect(port, path, server_name, ca_pem).await {
        Ok(_) => Ok((101, Some("sip".into()))),
        Err(WssFailure::WebSocketPathNotFound { .. }) => Ok((404, None)),
        Err(WssFailure::UpgradeRejected { status }) => Ok((status, None)),
        Err(WssFailure::SubprotocolRejected { answered }) => Ok((101, answered)),
        Err(other) => Err(other.to_string()),
    }
}

//! The `webrtc-pbx-operator` binary: `crd`, `render` (and, as they land,
//! `run` and `probe`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use webrtc_pbx_operator::{cli, controller, crd, render, telemetry};

#[derive(Parser)]
#[command(
    name = "webrtc-pbx-operator",
    version,
    about = "Browser-reachable Asterisk PBXes on Kubernetes, proven by probes"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: String,
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else "default").
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "webrtc-pbx-operator")]
    lease_name: String,
    /// Probe runs in flight at once, across all PBXs.
    #[arg(long, default_value_t = controller::probes::DEFAULT_CONCURRENCY)]
    probe_concurrency: usize,
    /// Image a PBX may run: a repository (any tag or digest) or a prefix
    /// ending in `/`; repeatable. Default: the project's images only. `*`
    /// allows any image.
    #[arg(long = "allowed-image", value_name = "REPOSITORY")]
    allowed_images: Vec<String>,
    /// Whether PBXs may use network.mode HostNetwork.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allow_host_network: bool,
    /// Node label a PBX may select on (KEY or KEY=VALUE); repeatable.
    /// Default: any.
    #[arg(long = "allowed-node-selector", value_name = "KEY[=VALUE]")]
    allowed_node_selectors: Vec<String>,
    /// Where probes.connectAddress may point besides the PBX itself: a CIDR
    /// (any port) or HOST:PORT; repeatable.
    #[arg(long = "probe-connect-allow", value_name = "CIDR|HOST:PORT")]
    probe_connect_allow: Vec<String>,
    /// Write a prometheus-operator PodMonitor beside each PBX, so Prometheus
    /// scrapes its Asterisk's own metrics (needs the PodMonitor CRD).
    #[arg(long)]
    pod_monitors: bool,
    /// A label of every PodMonitor (what a Prometheus selects them by);
    /// repeatable.
    #[arg(long = "pod-monitor-label", value_name = "KEY=VALUE", value_parser = key_value)]
    pod_monitor_labels: Vec<(String, String)>,
    /// TCP ports handed to HostNetwork PBXs that leave wss.port out.
    #[arg(long, value_name = "START-END", default_value = "8089-8999", value_parser = port_range)]
    wss_port_pool: webrtc_pbx_operator::api::PortRange,
    /// UDP ports handed, in blocks, to HostNetwork PBXs that leave
    /// rtp.portRange out.
    #[arg(long, value_name = "START-END", default_value = "10000-59999", value_parser = port_range)]
    rtp_port_pool: webrtc_pbx_operator::api::PortRange,
    /// Ports per allocated RTP block.
    #[arg(long, default_value_t = 100)]
    rtp_block_size: u16,
    /// PBXs that may replace their pods (draining their calls) at once when
    /// a new pod template reaches many, e.g. after an operator upgrade; 0:
    /// no limit.
    #[arg(long, default_value_t = controller::DEFAULT_MAX_ROLLING)]
    max_rolling_pbxs: usize,
    /// The ConfigMap (in the Lease's namespace) that records allocated ports.
    #[arg(long, default_value = controller::DEFAULT_LEDGER)]
    port_ledger: String,
}

fn port_range(text: &str) -> Result<webrtc_pbx_operator::api::PortRange, String> {
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not START-END"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map(i32::from)
            .map_err(|e| format!("{p:?}: {e}"))
    };
    Ok(webrtc_pbx_operator::api::PortRange {
        start: port(start)?,
        end: port(end)?,
    })
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.into(), value.into()))
}

impl RunArgs {
    fn pod_monitors(&self) -> Option<std::collections::BTreeMap<String, String>> {
        self.pod_monitors
            .then(|| self.pod_monitor_labels.iter().cloned().collect())
    }

    fn policy(&self) -> webrtc_pbx_operator::policy::Policy {
        let defaults = webrtc_pbx_operator::policy::Policy::default();
        webrtc_pbx_operator::policy::Policy {
            allowed_images: match self.allowed_images.as_slice() {
                [] => defaults.allowed_images,
                any if any.iter().any(|i| i == "*") => vec![],
                list => list.to_vec(),
            },
            allow_host_network: self.allow_host_network,
            allowed_node_selectors: self.allowed_node_selectors.clone(),
            probe_connect_allow: self.probe_connect_allow.clone(),
        }
    }
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// The PBX's WebSocket URL, e.g. wss://pbx.example.com:8089/ws.
    #[arg(long)]
    url: String,
    /// SIP domain (default: the URL's host).
    #[arg(long)]
    domain: Option<String>,
    /// User (extension) to REGISTER as; without it only WSS is checked.
    #[arg(long)]
    user: Option<String>,
    /// Password of --user.
    #[arg(long, conflicts_with = "password_file")]
    password: Option<String>,
    /// File holding the password of --user.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Trust this CA (PEM) instead of the system roots.
    #[arg(long, conflicts_with = "insecure")]
    ca_file: Option<PathBuf>,
    /// Accept any certificate (it is still reported).
    #[arg(long)]
    insecure: bool,
    /// Dial HOST:PORT instead, checking SNI, Host and the certificate against the URL's host.
    #[arg(long, value_name = "HOST:PORT")]
    connect_to: Option<String>,
    /// Place a WebRTC echo call to this extension (needs --user).
    #[arg(long)]
    echo_extension: Option<String>,
    /// Length of the echo call (Go duration).
    #[arg(long, default_value = "10s")]
    echo_duration: String,
    /// Local address for the call's media (default: the one that routes to the PBX).
    #[arg(long)]
    media_address: Option<std::net::IpAddr>,
    /// Call a second user at this extension (needs --user and --callee):
    /// both legs WebRTC, audio checked in each direction.
    #[arg(long, requires = "callee")]
    call_extension: Option<String>,
    /// The user that answers the --call-extension call (registers on a
    /// WebSocket of its own).
    #[arg(long)]
    callee: Option<String>,
    /// File holding the password of --callee.
    #[arg(long, requires = "callee")]
    callee_password_file: Option<PathBuf>,
    /// Length of the call to --callee (Go duration).
    #[arg(long, default_value = "10s")]
    call_duration: String,
    /// Local address for the callee's media (default: --media-address).
    #[arg(long)]
    callee_media_address: Option<std::net::IpAddr>,
    /// Echo (or user-call, each direction) loss above this percentage fails as HighLoss.
    #[arg(long, default_value_t = 5.0)]
    max_loss: f64,
    /// Median echo round trip above this (ms) fails as HighLatency.
    #[arg(long, default_value_t = 400.0)]
    max_rtt: f64,
    /// An echo call whose E-model MOS estimate is below this fails as
    /// PoorCallQuality.
    #[arg(long, default_value_t = webrtc_pbx_operator::probe::quality::DEFAULT_MIN_MOS)]
    min_mos: f64,
    /// Also read Asterisk's own metrics (res_prometheus at /metrics on the
    /// WSS port) with the password in this file (the `metrics-password` key
    /// of the operator's NAME-asterisk Secret).
    #[arg(long, value_name = "FILE")]
    metrics_password_file: Option<PathBuf>,
    /// User of --metrics-password-file.
    #[arg(long, default_value = webrtc_pbx_operator::validate::METRICS_USERNAME)]
    metrics_user: String,
    /// Limit of each phase and SIP transaction (Go duration).
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Probe any PBX: WSS (DNS, TCP, TLS, WebSocket) and REGISTER, with
    /// timings and named faults. Exit 0 only if every check passed.
    Probe(Box<ProbeArgs>),
    /// Run the controller (kubeconfig or in-cluster configuration).
    Run(RunArgs),
    /// Print the WebRtcPbx CustomResourceDefinition as YAML.
    Crd {
        /// Print the field reference as Markdown instead (the README's).
        #[arg(long)]
        reference: bool,
    },
    /// Print one user's softphone configuration, read from the cluster
    /// (the PBX's NAME-clients Secret): JsSIP or SIP.js JSON, the SIP URI
    /// and web phone link, a QR code of that link, or the CA to trust.
    ClientConfig {
        /// Namespace of the WebRtcPbx (default: the kubeconfig's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// The WebRtcPbx.
        pbx: String,
        /// The user's extension.
        user: String,
        /// What to print.
        #[arg(long, value_enum, default_value = "jssip")]
        format: webrtc_pbx_operator::client_config::Format,
        /// With --format qr: also write the code as a PNG to FILE.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print every object the operator would create for WebRtcPbx manifests
    /// (with the Secrets and ConfigMaps they reference), or write the Asterisk
    /// files with --config-dir.
    Render {
        /// Manifest files; `-` reads stdin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the files Asterisk reads under DIR/etc/asterisk instead.
        #[arg(long, value_name = "DIR")]
        config_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Run(run) => return run_controller(run),
        Command::Probe(args) => return run_probe(*args),
        Command::ClientConfig {
            namespace,
            pbx,
            user,
            format,
            output,
        } => return run_client_config(namespace, &pbx, &user, format, output.as_deref()),
        Command::Crd { reference: true } => {
            print!("{}", crd::reference_markdown());
            Ok(())
        }
        Command::Crd { reference: false } => crd::crd_yaml()
            .map(|y| print!("{y}"))
            .map_err(|e| cli::CliError::Yaml(e.to_string())),
        Command::Render { files, config_dir } => run_render(&files, config_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_client_config(
    namespace: Option<String>,
    pbx: &str,
    user: &str,
    format: webrtc_pbx_operator::client_config::Format,
    output: Option<&std::path::Path>,
) -> ExitCode {
    use webrtc_pbx_operator::client_config;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let client = kube::Client::try_default().await?;
        let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        client_config::run(client, &ns, pbx, user, format, output).await
    });
    match result {
        Ok(printed) => {
            print!("{}", printed.stdout);
            if let Some(note) = printed.note {
                eprintln!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error ({}): {e}", e.category());
            ExitCode::FAILURE
        }
    }
}

fn run_controller(args: RunArgs) -> ExitCode {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // One crypto provider for every TLS client in the process.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::warn!("a rustls crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let metrics = std::sync::Arc::new(telemetry::Metrics::default());
        let client = match controller::client::counted_client(metrics.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a Kubernetes client (kubeconfig or in-cluster)");
                return ExitCode::FAILURE;
            }
        };
        let pools = webrtc_pbx_operator::allocate::Pools {
            wss: args.wss_port_pool,
            rtp: args.rtp_port_pool,
            rtp_block: args.rtp_block_size,
        };
        if let Some(problem) = pools.problem() {
            tracing::error!(%problem, "the port pools cannot work");
            return ExitCode::FAILURE;
        }
        let lease_namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let ctx = std::sync::Arc::new(
            controller::Context::with_probes(
                client,
                std::sync::Arc::new(controller::SystemClock),
                args.probe_concurrency,
                metrics,
            )
            .with_policy(args.policy())
            .with_pod_monitors(args.pod_monitors())
            .with_allocator(pools, &lease_namespace, &args.port_ledger)
            .with_max_rolling(args.max_rolling_pbxs),
        );
        let listener = match tokio::net::TcpListener::bind(&args.metrics_address).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(address = %args.metrics_address, error = %e, "cannot listen for /metrics");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(telemetry::serve(listener, ctx.metrics.clone()));
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into()), std::process::id()));
        let lease = controller::leader::LeaseConfig {
            name: args.lease_name,
            namespace: lease_namespace,
            identity,
            duration_seconds: 15,
            grace_seconds: 5,
        };
        tracing::info!(identity = %lease.identity, "controller starting");
        if let Err(e) = controller::leader::run_elected(ctx, args.namespace, lease, shutdown_signal()).await {
            tracing::error!(category = e.category(), error = %e, "controller stopped");
            return ExitCode::FAILURE;
        }
        tracing::info!("controller stopped");
        ExitCode::SUCCESS
    })
}

fn run_probe(args: ProbeArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let url = match url::Url::parse(&args.url) {
        Ok(u) if u.scheme() == "wss" && u.host_str().is_some() => u,
        Ok(_) => {
            return fail(format!(
                "{}: the URL must be wss://HOST[:PORT]/PATH",
                args.url
            ));
        }
        Err(e) => return fail(format!("{}: {e}", args.url)),
    };
    let timeout = match webrtc_pbx_operator::validate::parse_duration(&args.timeout) {
        Ok(t) => t,
        Err(e) => return fail(format!("--timeout: {e}")),
    };
    let ca_pem = match &args.ca_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(pem) => Some(pem),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        None => None,
    };
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(p) => Some(p.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        (None, None) => None,
    };
    let metrics = match &args.metrics_password_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(p) => Some(webrtc_pbx_operator::probe::asterisk_metrics::Access {
                path: webrtc_pbx_operator::render::METRICS_PATH.into(),
                user: args.metrics_user.clone(),
                password: p.trim_end_matches(['\n', '\r']).to_string(),
            }),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        None => None,
    };
    let account = match (&args.user, password) {
        (Some(user), Some(password)) => Some(webrtc_pbx_operator::probe::register::Account {
            domain: args
                .domain
                .clone()
                .unwrap_or_else(|| url.host_str().unwrap_or_default().to_string()),
            user: user.clone(),
            password,
        }),
        (Some(_), None) => return fail("--user needs --password or --password-file".into()),
        (None, _) => None,
    };
    let calls = args.echo_extension.is_some() || args.call_extension.is_some();
    if calls && account.is_none() {
        return fail("--echo-extension and --call-extension need --user and a password".into());
    }
    let media_ip = match (calls, args.media_address) {
        (false, _) => std::net::IpAddr::from([0, 0, 0, 0]),
        (true, Some(ip)) => ip,
        (true, None) => {
            let dialled = args.connect_to.clone().unwrap_or_else(|| {
                format!(
                    "{}:{}",
                    url.host_str().unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(443)
                )
            });
            match webrtc_pbx_operator::probe::transport::route_source(&dialled) {
                Some(ip) => ip,
                None => {
                    return fail(format!(
                        "cannot find a local address towards {dialled}; pass --media-address"
                    ));
                }
            }
        }
    };
    let echo = match &args.echo_extension {
        None => None,
        Some(extension) => {
            let duration = match webrtc_pbx_operator::validate::parse_duration(&args.echo_duration)
            {
                Ok(d) => d,
                Err(e) => return fail(format!("--echo-duration: {e}")),
            };
            Some(webrtc_pbx_operator::probe::echo::EchoOptions {
                extension: extension.clone(),
                duration,
                timeout,
                media_ip,
                max_loss_percent: args.max_loss,
                max_rtt_ms: args.max_rtt,
                min_mos: args.min_mos,
            })
        }
    };
    let user_call = match (&args.call_extension, &args.callee, &account) {
        (Some(extension), Some(callee), Some(caller)) => {
            let duration = match webrtc_pbx_operator::validate::parse_duration(&args.call_duration)
            {
                Ok(d) => d,
                Err(e) => return fail(format!("--call-duration: {e}")),
            };
            let Some(path) = &args.callee_password_file else {
                return fail("--callee needs --callee-password-file".into());
            };
            let password = match std::fs::read_to_string(path) {
                Ok(p) => p.trim_end_matches(['\n', '\r']).to_string(),
                Err(e) => return fail(format!("{}: {e}", path.display())),
            };
            Some(webrtc_pbx_operator::probe::user_call::UserCallOptions {
                callee: webrtc_pbx_operator::probe::register::Account {
                    domain: caller.domain.clone(),
                    user: callee.clone(),
                    password,
                },
                extension: extension.clone(),
                duration,
                timeout,
                media_ip,
                callee_media_ip: args.callee_media_address.unwrap_or(media_ip),
                max_loss_percent: args.max_loss,
                max_rtt_ms: args.max_rtt,
                min_mos: args.min_mos,
            })
        }
        (None, Some(_), _) => return fail("--callee needs --call-extension".into()),
        _ => None,
    };
    let request = webrtc_pbx_operator::probe::Request {
        target: webrtc_pbx_operator::probe::transport::Target {
            url,
            connect_to: args.connect_to.clone(),
            ca_pem,
            insecure: args.insecure,
            timeout,
        },
        account,
        echo,
        user_call,
        metrics,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let report = runtime.block_on(webrtc_pbx_operator::probe::run(&request));
    match args.output {
        Output::Table => print!("{}", webrtc_pbx_operator::probe::table(&report)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

fn run_render(files: &[PathBuf], config_dir: Option<PathBuf>) -> Result<(), cli::CliError> {
    let inputs = cli::read_inputs(files)?;
    let rendered = cli::render_all(&inputs)?;
    match config_dir {
        Some(dir) => {
            if rendered.len() != 1 {
                return Err(cli::CliError::SeveralPbxes(rendered.len()));
            }
            let (pbx, r) = &rendered[0];
            cli::write_config_dir(&dir, r, cli::tls_secret(&inputs, pbx))
        }
        None => {
            for (_, r) in &rendered {
                print!(
                    "{}",
                    render::objects_yaml(&r.objects)
                        .map_err(|e| cli::CliError::Yaml(e.to_string()))?
                );
            }
            Ok(())
        }
    }
}

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
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (kubeconfig or in-cluster configuration).
    Run(RunArgs),
    /// Print the WebRtcPbx CustomResourceDefinition as YAML.
    Crd,
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
        Command::Crd => crd::crd_yaml()
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
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a Kubernetes client (kubeconfig or in-cluster)");
                return ExitCode::FAILURE;
            }
        };
        let ctx = std::sync::Arc::new(controller::Context::new(client, std::sync::Arc::new(controller::SystemClock)));
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
            namespace: args
                .lease_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into()),
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

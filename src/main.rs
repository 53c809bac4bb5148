//! The `webrtc-pbx-operator` binary: `crd`, `render` (and, as they land,
//! `run` and `probe`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use webrtc_pbx_operator::{cli, crd, render};

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

#[derive(Subcommand)]
enum Command {
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

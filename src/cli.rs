//! The offline commands' shell: reads manifests, generates what must be
//! random, calls the pure steps, prints or writes the result.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;

use crate::api::WebRtcPbx;
use crate::render::{self, asterisk};
use crate::validate::{self, Generated, Problem, Referenced};

/// Errors of the offline commands, each with a stable category.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A manifest is not valid YAML or not a known object.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The input holds no WebRtcPbx.
    #[error("no WebRtcPbx found in the input")]
    NoPbx,
    /// PBXs failed validation: every problem of every PBX, one per line.
    #[error("{}", .0.iter().map(|(pbx, p)| format!("{pbx}: {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<(String, Problem)>),
    /// YAML output failed.
    #[error("cannot write YAML: {0}")]
    Yaml(String),
    /// `--config-dir` with several PBXs.
    #[error("--config-dir takes exactly one WebRtcPbx; the input has {0}")]
    SeveralPbxes(usize),
}

impl CliError {
    /// A stable category for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CliError::Io { .. } => "io",
            CliError::Manifest { .. } | CliError::NoPbx => "manifest",
            CliError::Invalid(_) | CliError::SeveralPbxes(_) => "invalid",
            CliError::Yaml(_) => "yaml",
        }
    }
}

/// The objects read from manifests.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The PBXs.
    pub pbxes: Vec<WebRtcPbx>,
    /// Secrets, by namespace then name.
    pub secrets: BTreeMap<String, Vec<Secret>>,
    /// ConfigMaps, by namespace.
    pub config_maps: BTreeMap<String, Vec<ConfigMap>>,
}

/// Reads multi-document YAML manifests from files (`-` is stdin).
pub fn read_inputs(paths: &[PathBuf]) -> Result<Inputs, CliError> {
    let mut inputs = Inputs::default();
    for path in paths {
        let name = path.display().to_string();
        let text = if name == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|source| CliError::Io {
                    path: name.clone(),
                    source,
                })?;
            s
        } else {
            std::fs::read_to_string(path).map_err(|source| CliError::Io {
                path: name.clone(),
                source,
            })?
        };
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| CliError::Manifest {
                path: name.clone(),
                message: e.to_string(),
            })?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let bad = |e: serde_json::Error| CliError::Manifest {
                path: name.clone(),
                message: format!("{kind}: {e}"),
            };
            match kind.as_str() {
                "WebRtcPbx" => inputs.pbxes.push(serde_json::from_value(doc).map_err(bad)?),
                "Secret" => {
                    let s: Secret = serde_json::from_value(doc).map_err(bad)?;
                    inputs
                        .secrets
                        .entry(namespace_of(s.namespace()))
                        .or_default()
                        .push(s);
                }
                "ConfigMap" => {
                    let c: ConfigMap = serde_json::from_value(doc).map_err(bad)?;
                    inputs
                        .config_maps
                        .entry(namespace_of(c.namespace()))
                        .or_default()
                        .push(c);
                }
                // Other objects (Namespaces, ...) may sit in the same file.
                _ => {}
            }
        }
    }
    if inputs.pbxes.is_empty() {
        return Err(CliError::NoPbx);
    }
    Ok(inputs)
}

fn namespace_of(ns: Option<String>) -> String {
    ns.unwrap_or_else(|| "default".into())
}

/// Validates and renders every PBX of the inputs.
pub fn render_all(inputs: &Inputs) -> Result<Vec<(WebRtcPbx, render::Rendered)>, CliError> {
    let mut rng = rand::rng();
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let allocations = crate::allocate::place_all(&Default::default(), &inputs.pbxes);
    for (pbx, ports) in inputs.pbxes.iter().zip(allocations) {
        let ns = namespace_of(pbx.namespace());
        let referenced = Referenced::from_objects(
            inputs.secrets.get(&ns).cloned().unwrap_or_default(),
            inputs.config_maps.get(&ns).cloned().unwrap_or_default(),
        );
        let generated = Generated {
            ports,
            ..validate::fill_generated(&pbx.spec, Generated::default(), &mut rng)
        };
        match validate::validate(pbx, &referenced, &generated) {
            Ok(v) => out.push((pbx.clone(), render::render(&v))),
            Err(problems) => {
                let name = format!("{ns}/{}", pbx.name_any());
                failures.extend(problems.into_iter().map(|p| (name.clone(), p)));
            }
        }
    }
    if failures.is_empty() {
        Ok(out)
    } else {
        Err(CliError::Invalid(failures))
    }
}

/// Writes the files Asterisk reads, under `dir` at their /etc/asterisk paths.
/// Secret-bearing files get mode 0600.
pub fn write_config_dir(
    dir: &Path,
    rendered: &render::Rendered,
    tls: Option<&Secret>,
) -> Result<(), CliError> {
    let etc = dir.join(asterisk::ETC_DIR.trim_start_matches('/'));
    let mut files: Vec<(PathBuf, Vec<u8>, bool)> = Vec::new();
    for (name, text) in &rendered.config.files {
        files.push((etc.join(name), text.clone().into_bytes(), false));
    }
    for (name, text) in &rendered.config.secret_files {
        files.push((
            etc.join(asterisk::SECRETS_DIR).join(name),
            text.clone().into_bytes(),
            true,
        ));
    }
    if let Some(data) = tls.and_then(|s| s.data.as_ref()) {
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            if let Some(v) = data.get(key) {
                files.push((etc.join(asterisk::KEYS_DIR).join(key), v.0.clone(), true));
            }
        }
    }
    for (path, bytes, secret) in files {
        let io = |source| CliError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, &bytes).map_err(io)?;
        if secret {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    Ok(())
}

/// The TLS Secret of a PBX, when it is among the inputs.
pub fn tls_secret<'a>(inputs: &'a Inputs, pbx: &WebRtcPbx) -> Option<&'a Secret> {
    let name = validate::tls_secret_name(&pbx.name_any(), &pbx.spec);
    inputs
        .secrets
        .get(&namespace_of(pbx.namespace()))?
        .iter()
        .find(|s| s.name_any() == name)
}

//! The harness playing kubelet for one PBX pod. kwok fakes the pod's status;
//! this runs what the pod would run: it reads the StatefulSet, ConfigMap and
//! Secrets the operator wrote to the apiserver, lays out the `asterisk`
//! container's /etc/asterisk mounts exactly as its volumes say (ConfigMap and
//! Secret keys or items, modes, emptyDirs), and starts real Asterisk on them,
//! unmodified, in a test host. Like the kubelet it refreshes mounted files
//! when their objects change and starts a new Asterisk when the pod is
//! replaced; like the pod's config-reloader sidecar it runs `core reload`
//! after a file changed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::{Asterisk, Netns, ground_env, wait_until};

/// Where Asterisk's configuration is mounted in the pod.
const ETC: &str = "/etc/asterisk";

/// One file of the layout: content and mode.
type Files = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// Kubelet for pod `NAME-0` of StatefulSet `NAME`.
pub struct Kubelet {
    client: Client,
    ns: String,
    name: String,
    /// The test host Asterisk runs in.
    pub netns: Netns,
    /// Asterisk's /etc/asterisk.
    pub etc: PathBuf,
    asterisk: Option<Asterisk>,
    files: Files,
    pod_uid: Option<String>,
}

impl Kubelet {
    /// Waits for the operator's objects, lays them out and starts Asterisk.
    pub async fn start(client: Client, ns: &str, name: &str, netns: Netns, dir: &Path) -> Kubelet {
        let mut kubelet = Kubelet {
            client,
            ns: ns.into(),
            name: name.into(),
            netns,
            etc: dir.join("etc"),
            asterisk: None,
            files: Files::new(),
            pod_uid: None,
        };
        let files = wait_until(Duration::from_secs(30), "the pod's volumes", || {
            kubelet.desired()
        })
        .await;
        kubelet.pod_uid = kubelet.pod_uid().await;
        kubelet.write(files);
        kubelet.start_asterisk();
        kubelet
    }

    /// Starts Asterisk on the current layout and waits until it is booted.
    pub fn start_asterisk(&mut self) {
        let mut asterisk = Asterisk::start_in(&self.etc, Some(&self.netns));
        asterisk.wait_booted();
        self.asterisk = Some(asterisk);
    }

    /// Stops Asterisk (SIGKILL), as a crashed container.
    pub fn stop_asterisk(&mut self) {
        if let Some(mut a) = self.asterisk.take() {
            a.kill();
        }
    }

    /// What the running Asterisk printed (empty when stopped).
    pub fn asterisk_output(&self) -> String {
        self.asterisk
            .as_ref()
            .map(Asterisk::output)
            .unwrap_or_default()
    }

    /// One kubelet sync: refreshes changed files (then `core reload`), or
    /// starts a new Asterisk when the pod was replaced. True when anything changed.
    pub async fn sync(&mut self) -> bool {
        let Some(files) = self.desired().await else {
            return false;
        };
        let uid = self.pod_uid().await;
        if uid.is_some() && uid != self.pod_uid {
            self.pod_uid = uid;
            let was_running = self.asterisk.is_some();
            self.stop_asterisk();
            self.write(files);
            if was_running {
                self.start_asterisk();
            }
            return true;
        }
        if files == self.files {
            return false;
        }
        self.write(files);
        if let Some(a) = &self.asterisk {
            let out = a.cli("core reload");
            assert!(!out.contains("Unable to connect"), "core reload: {out}");
        }
        true
    }

    async fn pod_uid(&self) -> Option<String> {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&format!("{}-0", self.name))
            .await
            .ok()
            .flatten()
            .and_then(|p| p.uid())
    }

    /// The files the asterisk container sees under /etc/asterisk, or None
    /// while an object its volumes need does not exist yet.
    async fn desired(&self) -> Option<Files> {
        let sts = Api::<StatefulSet>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&self.name)
            .await
            .ok()??;
        let pod = sts.spec?.template.spec?;
        let container = pod.containers.iter().find(|c| c.name == "asterisk")?;
        let volumes = pod.volumes.unwrap_or_default();
        let mut files = Files::new();
        for mount in container.volume_mounts.iter().flatten() {
            let Some(rel) = mount
                .mount_path
                .strip_prefix(ETC)
                .map(|r| r.trim_start_matches('/'))
            else {
                continue; // run, spool and log dirs come from scripts/ground
            };
            let volume = volumes.iter().find(|v| v.name == mount.name)?;
            let (data, items, mode) = if let Some(cm) = &volume.config_map {
                let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
                    .get_opt(&cm.name)
                    .await
                    .ok()??;
                let data = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect::<BTreeMap<_, _>>();
                let source = volume.config_map.as_ref()?;
                (
                    data,
                    source.items.clone(),
                    source.default_mode.unwrap_or(0o644),
                )
            } else if let Some(source) = &volume.secret {
                let secret = Api::<Secret>::namespaced(self.client.clone(), &self.ns)
                    .get_opt(source.secret_name.as_deref()?)
                    .await
                    .ok()??;
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect::<BTreeMap<_, _>>();
                (
                    data,
                    source.items.clone(),
                    source.default_mode.unwrap_or(0o644),
                )
            } else if volume.empty_dir.is_some() {
                (BTreeMap::new(), None, 0o755)
            } else {
                panic!(
                    "the harness cannot mount volume {volume:?} at {}",
                    mount.mount_path
                );
            };
            let dir = PathBuf::from(rel);
            let chosen: Vec<KeyToPath> = items.unwrap_or_else(|| {
                data.keys()
                    .map(|k| KeyToPath {
                        key: k.clone(),
                        path: k.clone(),
                        mode: None,
                    })
                    .collect()
            });
            for item in chosen {
                // A missing key fails the pod's start, like the kubelet's.
                let content = data.get(&item.key)?;
                files.insert(
                    dir.join(&item.path),
                    (content.clone(), item.mode.unwrap_or(mode) as u32),
                );
            }
            files.entry(dir.join(".dir")).or_insert((Vec::new(), 0o755));
        }
        Some(files)
    }

    /// Writes the layout, removing files no longer mounted; owned by the
    /// chroot's asterisk user (the pod's fsGroup gives it the same access).
    fn write(&mut self, files: Files) {
        let passwd =
            std::fs::read_to_string(format!("{}/etc/passwd", ground_env("ASTERISK_ROOT"))).unwrap();
        let ids = passwd
            .lines()
            .find(|l| l.starts_with("asterisk:"))
            .map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f[2].parse::<u32>().unwrap(), f[3].parse::<u32>().unwrap())
            })
            .expect("asterisk user in the chroot");
        for old in self.files.keys().filter(|k| !files.contains_key(*k)) {
            let _ = std::fs::remove_file(self.etc.join(old));
        }
        for (rel, (content, mode)) in &files {
            let path = self.etc.join(rel);
            let dir = path.parent().unwrap();
            std::fs::create_dir_all(dir).unwrap();
            std::os::unix::fs::chown(dir, Some(ids.0), Some(ids.1)).unwrap();
            if rel.file_name().is_some_and(|n| n == ".dir") {
                continue;
            }
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            std::os::unix::fs::chown(&path, Some(ids.0), Some(ids.1)).unwrap();
        }
        self.files = files;
    }
}

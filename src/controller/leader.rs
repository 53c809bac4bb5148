//! Leader election: the controller runs only while this instance holds the
//! Lease, so two replicas can run and one takes over when the other dies.

use std::future::Future;
use std::sync::Arc;

use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use super::{Context, run};
use crate::names::FIELD_MANAGER;

/// The Lease and how this instance claims it.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This instance's identity (pod name).
    pub identity: String,
    /// Lease duration, seconds: a dead leader is replaced after this long.
    pub duration_seconds: u64,
    /// Renewal margin, seconds.
    pub grace_seconds: u64,
}

/// The field manager this instance locks the Lease with: its own. The lock
/// is a server-side apply of holderIdentity, and the apiserver refuses it
/// (409) only when another manager owns that field: with one manager
/// shared by the replicas, two that found the Lease free at the same time
/// both took it, and both led until the first renewal. At most 128
/// characters (the apiserver's limit): a longer identity is hashed.
pub fn lease_field_manager(identity: &str) -> String {
    let name = format!("{FIELD_MANAGER}-{identity}");
    if name.len() <= 128 {
        return name;
    }
    use sha2::Digest;
    format!(
        "{FIELD_MANAGER}-{:x}",
        sha2::Sha256::digest(identity.as_bytes())
    )
}

/// Leader-election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease manager failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// The lease manager's task ended on its own.
    #[error("leader election stopped unexpectedly")]
    Stopped,
    /// The controller ended (or panicked) while this instance led: the
    /// lease is released and the process exits, so another replica (or
    /// this one, restarted) takes over instead of a leader that reconciles
    /// nothing.
    #[error("the controller ended while leading: {0}")]
    ControllerEnded(String),
}

impl LeaderError {
    /// A stable category.
    pub fn category(&self) -> &'static str {
        "leader_election"
    }
}

/// Runs the controller (scoped to `scope`, or every namespace) whenever this
/// instance leads, until `shutdown` resolves; then releases the Lease.
pub async fn run_elected(
    ctx: Arc<Context>,
    scope: Option<String>,
    lease: LeaseConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), LeaderError> {
    lead(ctx, lease, shutdown, move |ctx, stop| {
        run(ctx, scope.clone(), async move {
            let _ = stop.await;
        })
    })
    .await
}

/// [`run_elected`] with the controller passed in: `start(ctx, stop)` runs
/// it until `stop` fires.
pub async fn lead<C, F>(
    ctx: Arc<Context>,
    lease: LeaseConfig,
    shutdown: impl Future<Output = ()> + Send,
    start: C,
) -> Result<(), LeaderError>
where
    C: Fn(Arc<Context>, tokio::sync::oneshot::Receiver<()>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .with_field_manager(lease_field_manager(&lease.identity))
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    // A follower is healthy and ready: it stands by.
    ctx.metrics.set_ready(true);
    tokio::pin!(shutdown);
    loop {
        while !*leading.borrow_and_update() {
            tokio::select! {
                () = &mut shutdown => return release(leading, task).await,
                changed = leading.changed() => changed.map_err(|_| LeaderError::Stopped)?,
            }
        }
        info!(identity = %lease.identity, "leading: starting the controller");
        ctx.metrics.leader.set(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut controller = tokio::spawn(start(ctx.clone(), stop_rx));
        let shutting_down = tokio::select! {
            () = &mut shutdown => true,
            lost = async {
                loop {
                    if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                        break;
                    }
                }
            } => { let () = lost; false }
            ended = &mut controller => {
                let why = match ended {
                    Ok(()) => "it returned".to_string(),
                    Err(e) if e.is_panic() => "it panicked".to_string(),
                    Err(e) => e.to_string(),
                };
                ctx.metrics.leader.set(0);
                ctx.metrics.set_ready(false);
                warn!(identity = %lease.identity, %why, "the controller ended while leading: releasing the lease");
                release(leading, task).await?;
                return Err(LeaderError::ControllerEnded(why));
            }
        };
        let _ = stop_tx.send(());
        let _ = controller.await;
        ctx.metrics.leader.set(0);
        // A standby's per-PBX series would go stale beside the new leader's
        // (and keep alerts firing on what it last saw).
        ctx.metrics.forget_all_pbxs();
        if shutting_down {
            return release(leading, task).await;
        }
        warn!(identity = %lease.identity, "lost the lease: controller stopped, standing by");
    }
}

async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) -> Result<(), LeaderError> {
    // Closing the channel ends the lease task, which hands the manager back.
    drop(leading);
    if let Ok(Ok(manager)) = task.await {
        manager.release().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_locks_with_a_field_manager_of_its_own() {
        let a = lease_field_manager("webrtc-pbx-operator-5d9c7b-x2k4q");
        assert_eq!(a, "webrtc-pbx-operator-webrtc-pbx-operator-5d9c7b-x2k4q");
        assert_ne!(a, lease_field_manager("webrtc-pbx-operator-5d9c7b-p8w2z"));
        let long = "p".repeat(253);
        let hashed = lease_field_manager(&long);
        assert!(hashed.len() <= 128, "{hashed}");
        assert_ne!(hashed, lease_field_manager(&"q".repeat(253)));
    }
}

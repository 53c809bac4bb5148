//! The rollout budget: a pod template change on a running PBX replaces its
//! pod (which drains its calls first), and a new operator version that
//! renders a different template would otherwise replace every PBX's pod at
//! once, leaving the whole fleet refusing new calls for its drain. At most
//! `limit` PBXs roll at a time; the others keep their running template and
//! look again shortly. A PBX rolls from the write of its new template until
//! its StatefulSet reports the rollout done; the writes this process made
//! count at once, before the StatefulSet controller has said anything.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;

/// How long a write counts as a rollout before its StatefulSet shows it.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

/// How soon a PBX held back looks again.
pub const RETRY: Duration = Duration::from_secs(5);

/// The PBXs rolling now and the budget.
pub struct Rollouts {
    limit: usize,
    started: Mutex<HashMap<String, Instant>>,
}

impl Rollouts {
    /// At most `limit` PBXs rolling at once (0: no limit).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            started: Mutex::new(HashMap::new()),
        }
    }

    /// At most this many PBXs roll at once (0: no limit).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether PBX `key` (`namespace/name`) may start a rollout at `now`,
    /// with `rolling` the StatefulSets that show one; if so, it counts as
    /// rolling from now.
    pub fn try_start(&self, key: &str, rolling: &BTreeSet<String>, now: Instant) -> bool {
        let Ok(mut started) = self.started.lock() else {
            return true;
        };
        started.retain(|_, at| now.duration_since(*at) < SEEN_WITHIN);
        let mut all: BTreeSet<&str> = rolling.iter().map(String::as_str).collect();
        all.extend(started.keys().map(String::as_str));
        let allowed = self.limit == 0 || all.contains(key) || all.len() < self.limit;
        if allowed {
            started.insert(key.to_string(), now);
        }
        allowed
    }
}

/// Whether a StatefulSet shows a rollout in progress: its controller has
/// not seen the last spec, or its pods are not all of the new revision.
pub fn is_rolling(s: &StatefulSet) -> bool {
    let Some(st) = s.status.as_ref() else {
        return false;
    };
    let unseen = st.observed_generation < s.metadata.generation;
    let mixed = st.update_revision.is_some() && st.current_revision != st.update_revision;
    unseen || mixed
}

/// `namespace/name` of each rolling StatefulSet among `all`.
pub fn rolling<'a>(all: impl IntoIterator<Item = &'a StatefulSet>) -> BTreeSet<String> {
    all.into_iter()
        .filter(|s| is_rolling(s))
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_rolls_and_a_rolling_pbx_goes_on() {
        let r = Rollouts::new(2);
        let t0 = Instant::now();
        let none = BTreeSet::new();
        assert!(r.try_start("v/a", &none, t0));
        assert!(r.try_start("v/b", &none, t0), "two at once");
        assert!(!r.try_start("v/c", &none, t0), "a third waits");
        assert!(r.try_start("v/a", &none, t0), "a rolling PBX goes on");
        // Once the writes are older than the StatefulSets' word, those
        // decide: one still rolls, so one more may start.
        let later = t0 + SEEN_WITHIN;
        let one = BTreeSet::from(["v/a".to_string()]);
        assert!(r.try_start("v/c", &one, later));
        assert!(!r.try_start("v/d", &one, later));
        assert!(
            Rollouts::new(0).try_start("v/x", &one, later),
            "0: no limit"
        );
    }

    #[test]
    fn a_stateful_set_rolls_until_its_pods_are_of_the_new_revision() {
        let sts = |generation: i64, observed: i64, current: &str, update: &str| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a", "namespace": "v", "generation": generation},
                "status": {"replicas": 1, "observedGeneration": observed,
                           "currentRevision": current, "updateRevision": update}
            }))
            .unwrap()
        };
        assert!(!is_rolling(&sts(2, 2, "r2", "r2")));
        assert!(is_rolling(&sts(3, 2, "r2", "r2")), "not yet seen");
        assert!(
            is_rolling(&sts(3, 3, "r2", "r3")),
            "pods of the old revision"
        );
        let all = [sts(3, 3, "r2", "r3")];
        assert_eq!(rolling(&all), BTreeSet::from(["v/a".to_string()]));
    }
}

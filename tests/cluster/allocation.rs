//! Host ports allocated by the operator, on the real apiserver: PBXs
//! created at once, reconciled by two controllers at once (what two
//! operators that both believe they lead would do), never share a port;
//! allocations survive spec edits and a restart, are freed on delete, and
//! a PBX waiting on a full pool gets the port freed.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::fixture::Pbx;
use harness::inprocess::{Running, start_in};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use webrtc_pbx_operator::allocate::{Ledger, Pools, show};
use webrtc_pbx_operator::api::{PortRange, WebRtcPbx};
use webrtc_pbx_operator::controller::Context;

const LEDGER: &str = "ports";
const COUNT: usize = 13;

fn pools() -> Pools {
    // Twelve WSS ports for thirteen PBXs: the last one waits.
    Pools {
        wss: PortRange {
            start: 9100,
            end: 9111,
        },
        rtp: PortRange {
            start: 30000,
            end: 31299,
        },
        rtp_block: 100,
    }
}

async fn controller(ns: &str) -> Running {
    let ns2 = ns.to_string();
    start_in(ns.to_string(), move |client, clock| {
        Context::new(client, clock).with_allocator(pools(), &ns2, LEDGER)
    })
    .await
}

/// (name, uid, wss port, RTP range) of every PBX whose status shows both.
async fn allocated(api: &Api<WebRtcPbx>) -> Vec<(String, String, i32, PortRange)> {
    api.list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|p| {
            let e = p.status.as_ref()?.endpoints.as_ref()?;
            Some((p.name_any(), p.uid()?, e.wss_port?, e.rtp_port_range?))
        })
        .collect()
}

async fn ledger(client: &kube::Client, ns: &str) -> Ledger {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(LEDGER)
        .await
        .unwrap();
    let (ledger, bad) = Ledger::from_data(&cm.data.unwrap_or_default());
    assert!(bad.is_empty(), "{bad:?}");
    ledger
}

fn assert_disjoint(all: &[(String, String, i32, PortRange)]) {
    let wss: BTreeSet<i32> = all.iter().map(|a| a.2).collect();
    assert_eq!(wss.len(), all.len(), "a WSS port handed out twice: {all:?}");
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(
                a.3.end < b.3.start || b.3.end < a.3.start,
                "{} and {} share RTP ports: {} {}",
                a.0,
                b.0,
                show(a.3),
                show(b.3)
            );
        }
        assert!(pools().wss.contains(a.2) && pools().rtp.contains(a.3.start));
    }
}

#[tokio::test]
async fn ports_allocated_under_concurrent_creates_are_unique_stable_and_freed() {
    let client = harness::client().await;
    harness::install_project_crds(&client).await;
    let ns = harness::namespace(&client, "alloc").await;
    let (one, two) = (controller(&ns).await, controller(&ns).await);
    let api: Api<WebRtcPbx> = Api::namespaced(client.clone(), &ns);
    // All at once: the creates are in flight together.
    let creates = (0..COUNT).map(|i| {
        one.create(Pbx::new(
            &format!("p{i:02}"),
            // A deleted PBX's ports stay held for its drain timeout and
            // 30 s: the shortest.
            json!({"domain": format!("p{i}.alloc.test"), "drain": {"timeout": "0s"}}),
        ))
    });
    futures::future::join_all(creates).await;
    let all = harness::wait_until(Duration::from_secs(90), "twelve allocations", || async {
        let a = allocated(&api).await;
        (a.len() == COUNT - 1).then_some(a)
    })
    .await;
    assert_disjoint(&all);
    let book = ledger(&client, &ns).await;
    // The thirteenth holds its RTP block while it waits for a WSS port.
    assert_eq!(book.entries.len(), COUNT, "{book:?}");
    let short: Vec<_> = book.entries.values().filter(|e| e.wss.is_none()).collect();
    assert!(
        short.len() == 1 && short[0].rtp.is_some(),
        "one waits, with its RTP block: {book:?}"
    );
    for (name, uid, wss, rtp) in &all {
        let entry = &book.entries[uid];
        assert_eq!(
            (entry.wss, entry.rtp, entry.pbx.as_str()),
            (Some(*wss), Some(*rtp), format!("{ns}/{name}").as_str()),
            "the status shows the ledger"
        );
    }
    // The thirteenth waits, and says why.
    let waiting = api
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|p| !all.iter().any(|a| a.0 == p.name_any()))
        .unwrap()
        .name_any();
    harness::wait_for_condition(&client, &ns, &waiting, "Stalled", "True", None).await;
    let (_, _, message) = harness::condition(&client, &ns, &waiting, "ConfigRendered")
        .await
        .unwrap();
    assert!(
        message.contains("every port of the operator's WSS pool 9100-9111"),
        "{message}"
    );

    // A restart, then an edit of every spec: nothing moves.
    one.stop().await;
    two.stop().await;
    let three = controller(&ns).await;
    for (name, ..) in &all {
        let patch = json!({"spec": {"users": [{"extension": "1001"}]}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    harness::wait_until(Duration::from_secs(60), "every edit reconciled", || async {
        let pbxes = api.list(&Default::default()).await.unwrap();
        pbxes
            .iter()
            .filter(|p| p.name_any() != waiting)
            .all(|p| p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation)
            .then_some(())
    })
    .await;
    let mut after = allocated(&api).await;
    after.retain(|a| a.0 != waiting);
    let (mut before, mut after_sorted) = (all.clone(), after);
    before.sort_by(|a, b| a.0.cmp(&b.0));
    after_sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        before, after_sorted,
        "ports kept across a restart and edits"
    );

    // A delete releases the ports: held while its pod could drain, then the
    // waiting PBX gets the WSS port.
    let (gone, _, freed, _) = all[3].clone();
    let gone_uid = all[3].1.clone();
    api.delete(&gone, &DeleteParams::default()).await.unwrap();
    let held = harness::wait_until(Duration::from_secs(10), "the ports held", || async {
        let book = ledger(&client, &ns).await;
        book.entries
            .get(&format!("{gone_uid}.deleted"))
            .cloned()
            .filter(|_| !book.entries.contains_key(&gone_uid))
    })
    .await;
    assert_eq!(held.wss, Some(freed));
    assert!(held.held_until.is_some());
    // Held: the waiting PBX's next look (every 20 s) does not get it; once
    // the controller's clock passes the hold, it does.
    tokio::time::sleep(Duration::from_secs(22)).await;
    assert!(allocated(&api).await.iter().all(|a| a.0 != waiting));
    three.clock.advance(time::Duration::seconds(31));
    let got = harness::wait_until(
        Duration::from_secs(60),
        "the waiting PBX allocated",
        || async { allocated(&api).await.into_iter().find(|a| a.0 == waiting) },
    )
    .await;
    assert_eq!(got.2, freed, "the freed WSS port is the only one left");
    let book = ledger(&client, &ns).await;
    assert!(!book.entries.contains_key(&gone_uid), "freed: {book:?}");
    let live: Vec<_> = book
        .entries
        .iter()
        .filter(|(k, _)| !webrtc_pbx_operator::allocate::is_held_key(k))
        .collect();
    assert_eq!(live.len(), COUNT - 1);
    assert!(live.iter().all(|(_, e)| e.wss.is_some()));
    let mut now = allocated(&api).await;
    now.retain(|a| a.0 != gone);
    assert_disjoint(&now);
    three.stop().await;
}

//! Tests of leader election: its configuration, stepping down in time, and the lease taken and
//! released through the fake API server with only the granted verbs.

use super::*;
use crate::fake_api::{self, FakeApiServer};
use crate::reconcile::LEADER_ELECTION_PERMISSIONS;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Mutex;

#[test]
fn lease_namespace_is_required_and_named_in_the_error() {
    let err = LeaseConfig::new("l".into(), None, Some("op-0".into()), None).unwrap_err();
    assert!(err.to_string().contains("--lease-namespace"), "{err}");
    assert!(err.to_string().contains("POD_NAMESPACE"), "{err}");
    assert!(LeaseConfig::new("l".into(), Some(String::new()), Some("op-0".into()), None).is_err());
}

#[test]
fn identity_is_the_pod_name_else_the_hostname() {
    let ns = || Some("starling-system".to_string());
    let config = LeaseConfig::new("l".into(), ns(), Some("op-0".into()), Some("host".into()));
    assert_eq!(config.expect("config").identity, "op-0");
    let config = LeaseConfig::new("l".into(), ns(), Some(String::new()), Some("host".into()));
    assert_eq!(config.expect("config").identity, "host");
    let err = LeaseConfig::new("l".into(), ns(), None, None).unwrap_err();
    assert!(matches!(err, LeaderError::NoIdentity), "{err}");
}

#[test]
fn a_leader_that_cannot_renew_steps_down_before_its_lease_may_expire() {
    let t0 = Instant::now();
    assert_eq!(after_renew_error(t0, t0), RenewDecision::Retry);
    assert_eq!(
        after_renew_error(t0, t0 + Duration::from_secs(2)),
        RenewDecision::Retry
    );
    let step_down = (1..=LEASE_GRACE_SECONDS * 10)
        .map(|tenths| t0 + Duration::from_millis(tenths * 100))
        .find(|now| after_renew_error(t0, *now) == RenewDecision::StepDown)
        .expect("steps down at some point");
    assert!(
        step_down - t0 < Duration::from_secs(LEASE_GRACE_SECONDS),
        "steps down after {:?}, when the lease may have expired",
        step_down - t0
    );
    // A clock that went backwards does not count as time passed.
    assert_eq!(
        after_renew_error(t0 + Duration::from_secs(60), t0),
        RenewDecision::Retry
    );
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/starling-system/leases";

/// An API server that knows one Lease; records the verbs used on it.
#[derive(Default)]
struct LeaseStore {
    lease: Option<Value>,
    verbs: BTreeSet<&'static str>,
    version: u64,
}

/// Answers Lease requests from `store` until the future using the client is dropped.
async fn serve_leases(mut api: FakeApiServer, store: &Mutex<LeaseStore>) {
    let path = format!("{LEASES}/starling-operator");
    loop {
        let call = api.next().await;
        let mut s = store.lock().expect("store");
        s.version += 1;
        let version = s.version.to_string();
        match (&call.method, call.path.as_str()) {
            (&Method::GET, p) if p == path => {
                s.verbs.insert("get");
                match s.lease.clone() {
                    Some(lease) => call.respond_with(lease),
                    None => call.not_found(),
                }
            }
            (&Method::POST, LEASES) => {
                s.verbs.insert("create");
                let mut lease = call.body.clone();
                lease["metadata"]["resourceVersion"] = json!(version);
                s.lease = Some(lease.clone());
                call.respond(StatusCode::CREATED, lease);
            }
            (&Method::PATCH, p) if p == path => {
                s.verbs.insert("patch");
                let Some(lease) = s.lease.as_mut() else {
                    drop(s);
                    call.not_found();
                    continue;
                };
                if let Some(spec) = call.body["spec"].as_object() {
                    for (k, v) in spec {
                        lease["spec"][k] = v.clone();
                    }
                }
                lease["metadata"]["resourceVersion"] = json!(version);
                let lease = lease.clone();
                call.respond_with(lease);
            }
            (method, path) => panic!("unexpected {method} {path}"),
        }
    }
}

fn config() -> LeaseConfig {
    LeaseConfig::new(
        "starling-operator".into(),
        Some("starling-system".into()),
        Some("starling-operator-7d9f-abcde".into()),
        None,
    )
    .expect("config")
}

#[tokio::test]
async fn elector_creates_takes_and_releases_the_lease_with_only_the_granted_verbs() {
    let (client, api) = fake_api::client();
    let store = Mutex::new(LeaseStore::default());
    let elect = async {
        let elector = Elector::new(client, &config()).await.expect("elector");
        elector.acquire().await;
        let held = store.lock().expect("store").lease.clone().expect("a lease");
        elector.release().await;
        held
    };
    let held = tokio::select! {
        held = tokio::time::timeout(Duration::from_secs(20), elect) => held.expect("acquired in time"),
        () = serve_leases(api, &store) => unreachable!("the server runs until dropped"),
    };
    assert_eq!(held["metadata"]["name"], "starling-operator");
    assert_eq!(
        held["spec"]["holderIdentity"],
        "starling-operator-7d9f-abcde"
    );
    assert_eq!(held["spec"]["leaseDurationSeconds"], LEASE_DURATION_SECONDS);
    assert!(held["spec"]["renewTime"].is_string(), "{held:#}");

    let store = store.into_inner().expect("store");
    let released = store.lease.expect("lease");
    assert!(
        released["spec"]["holderIdentity"].is_null(),
        "released: {released:#}"
    );
    let granted: BTreeSet<&str> = LEADER_ELECTION_PERMISSIONS
        .iter()
        .flat_map(|(_, _, verbs)| verbs.iter().copied())
        .collect();
    assert!(
        store.verbs.is_subset(&granted),
        "used {:?}, granted {granted:?}",
        store.verbs
    );
    assert!(store.verbs.contains("create") && store.verbs.contains("patch"));
}

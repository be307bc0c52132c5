//! The user's story on a real Kubernetes cluster, with real pods: the project's images built and
//! loaded, the Helm chart installed, the minimal MqttCluster Ready, MQTT through the Service from
//! outside the pods, scaling 3→5→3→2 with `kubectl scale` and back to 3 by the example
//! HorizontalPodAutoscaler (membership following, pods that stay not restarted), the operator's
//! autoscaling on connections driven by 1,000 clients connecting and leaving (scaled 3→4, the
//! new pod filled by rebalancing, back to 3), a broker pod
//! and then the Redis pod deleted under a QoS 1 stream to persistent subscribers (no
//! acknowledged message may be lost, and afterwards new subscriptions on every pod must get what
//! is published on every other pod), the managed Redis turned to Sentinel (three Redis pods with
//! sentinels, acknowledgements waiting for a replica; the brokers roll onto it) and its
//! primary's pod deleted under the same kind of stream, a spec change rolling the pods, the full example (TLS,
//! password, ACL, WebSocket, encrypted gossip) adapted to one small node, and uninstalling
//! leaving nothing behind. It prints the figures (time to Ready, time to roll, messages
//! delivered and lost) at the end.
//!
//! Ignored by default. `scripts/kube-e2e.sh` runs it against `../shared/tools/kube-up` (a
//! single-node cluster in a network namespace of its own). By hand:
//!
//! ```sh
//! cargo build -p starling-broker -p starling-operator
//! KUBECONFIG=~/.kube/config STARLING_E2E_IMAGE_LOAD='kind load image-archive' \
//!   cargo test -p e2e --test kubernetes -- --ignored --nocapture
//! ```
//!
//! - `KUBECONFIG`: the cluster; it needs a Ready node.
//! - `STARLING_E2E_IMAGE_LOAD`: a command the path of an image archive is appended to, which
//!   makes the image available to the node (`kind load image-archive`, `ctr -n k8s.io images
//!   import`, ...). The images are built by `scripts/build-images.sh` from the binaries in
//!   `STARLING_E2E_BIN_DIR` (default: this test's own `target/<profile>`). The managed Redis'
//!   image (`redis:7.4-alpine`) must be pullable or already on the node; the Sentinel part
//!   runs a stand-in built by `scripts/redis-standin-image.py` (busybox-static needed).
//! - `STARLING_E2E_REPORT`: a file the figures are appended to.
//! - `STARLING_E2E_KEEP`: when the story breaks, leave what it installed (to look at it).
//! - `STARLING_E2E_LOG_DIR`: where the pods' logs are kept when a stream loses messages or gets
//!   duplicates without DUP (without it, their warnings are printed).
//!
//! Without `KUBECONFIG` or `STARLING_E2E_IMAGE_LOAD` the test fails saying it did not run: it is
//! only run on purpose, and not running is not passing. The test process must reach the node's
//! IP (NodePort) and the pods' IPs (each pod's MQTT and admin ports): with kube-up, run it
//! inside the cluster's network namespace (`kube-up exec`, as the script does).
//!
//! It installs release `starling` into namespace `starling-e2e-system`, the MqttCluster
//! `starling` into `starling-e2e` and the full example `production` into `starling-e2e-full`;
//! leftovers of an earlier run under those names are removed first. It also needs `helm`,
//! `kubectl`, `openssl` and the mosquitto clients on the PATH.

// Shared with the fault matrix, which reads every field this test does not.
#[path = "support/stream.rs"]
#[allow(dead_code)]
mod stream;

use anyhow::{bail, ensure, Context, Result};
use e2e::fleet::Fleet;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use starling_operator::crd::MqttCluster;
use starling_operator::resources::CONFIG_HASH_ANNOTATION;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stream::{Stream, Tally, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RELEASE: &str = "starling";
const OPERATOR_NS: &str = "starling-e2e-system";
const NS: &str = "starling-e2e";
/// The MqttCluster of operator/examples/mqttcluster-minimal.yaml.
const CLUSTER: &str = "starling";
const BROKERS: &str = "app.kubernetes.io/instance=starling,app.kubernetes.io/component=broker";
const REDIS: &str = "app.kubernetes.io/instance=starling,app.kubernetes.io/component=redis";
const MQTT_PORT: u16 = 1883;
/// Namespace and name of the full example (operator/examples/mqttcluster.yaml).
const FULL_NS: &str = "starling-e2e-full";
const FULL: &str = "production";
const TLS_PORT: u16 = 8883;
const WS_PORT: u16 = 8083;
const ADMIN_PORT: u16 = 9090;

/// How long a Secret change may take to reach a running broker: kubelet's sync period (1 min
/// by default) plus its cache, plus the broker's 5 s reload check.
const SECRET_UPDATE_WITHIN: Duration = Duration::from_secs(150);
/// Time allowed for pods to become Ready, a rollout, a scale.
const READY_WITHIN: Duration = Duration::from_secs(180);
/// Time allowed for membership to follow the pods.
const MEMBERS_WITHIN: Duration = Duration::from_secs(60);
/// Time allowed for a new subscription to be announced to the other pods.
const ROUTES_WITHIN: Duration = Duration::from_secs(15);
/// Time allowed for the stream to flow again after a fault.
const RESUME: Duration = Duration::from_secs(90);
const ACKS_WITHIN: Duration = Duration::from_secs(30);
const DELIVER_WITHIN: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(500);
/// Messages per second of the QoS 1 streams.
const RATE: u32 = 100;
const SUBSCRIBERS: usize = 2;
/// A stream standing still longer than this during a fault has its pods' logs kept.
const STALL: Duration = Duration::from_secs(5);
/// The Redis image the story's managed Redis with Sentinel runs (built and loaded with the
/// others: the node cannot pull the official one).
const SENTINEL_IMAGE: &str = "docker.io/starling-e2e/redis-standin:test";
/// How long the sentinels wait before they fail over, in the story (ms).
const SENTINEL_DOWN_AFTER_MS: u32 = 3000;
/// Polling pace of the waits (a retry pace, not synchronisation).
const POLL: Duration = Duration::from_millis(250);

/// Figures for the README and problems found on the way (asserted at the end, so that one
/// problem does not hide the rest of the story).
#[derive(Default)]
struct Record {
    figures: Vec<(String, String)>,
    problems: Vec<String>,
}

impl Record {
    fn figure(&mut self, what: &str, value: impl Into<String>) {
        let value = value.into();
        println!("FIGURE {what}: {value}");
        self.figures.push((what.to_string(), value));
    }

    fn problem(&mut self, what: String) {
        println!("PROBLEM {what}");
        self.problems.push(what);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace")
        .to_path_buf()
}

/// Runs a command to completion; its stdout, or an error with its output.
async fn command(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(workspace())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("starting {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

async fn kubectl(args: &[&str]) -> Result<String> {
    command("kubectl", args).await
}

/// Polls `probe` until it succeeds or `limit` passes; the last error says why not.
async fn poll<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not within {limit:?}")))
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Result<IpAddr> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .with_context(|| format!("pod {:?} has no IP", pod.metadata.name))?;
    ip.parse()
        .with_context(|| format!("pod IP {ip:?} does not parse"))
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// One sample without labels from a pod's `/metrics`.
async fn metric(ip: IpAddr, name: &str) -> Result<f64> {
    let (status, body) = e2e::http_get(SocketAddr::new(ip, ADMIN_PORT), "/metrics").await?;
    ensure!(status == 200, "/metrics of {ip} answered {status}");
    body.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{ip}: no metric {name}"))
}

/// One MqttCluster's view of the cluster: its namespace, its name, its pods.
struct Kube {
    client: Client,
    ns: &'static str,
    name: &'static str,
    pods: Api<Pod>,
}

impl Kube {
    fn new(client: Client, ns: &'static str, name: &'static str) -> Self {
        Kube {
            pods: Api::namespaced(client.clone(), ns),
            client,
            ns,
            name,
        }
    }

    /// A QoS 1 stream whose clients log in as the user the operator generated for the minimal
    /// example (Secret `NAME-users`): the example refuses anonymous clients.
    async fn stream(&self, version: Version, prefix: &str, subscribers: usize) -> Result<Stream> {
        let (username, password) = self.credentials().await?;
        Ok(Stream::new(version, prefix, subscribers, RATE).with_credentials(&username, &password))
    }

    /// The user name and password the operator generated for the minimal example (Secret
    /// `NAME-users`).
    async fn credentials(&self) -> Result<(String, String)> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), self.ns)
            .get(&format!("{}-users", self.name))
            .await
            .context("reading the generated user's Secret")?;
        let field = |key: &str| -> Result<String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .with_context(|| format!("the generated user's Secret has no `{key}`"))?;
            String::from_utf8(bytes.0.clone()).with_context(|| format!("`{key}` is not UTF-8"))
        };
        Ok((field("username")?, field("password")?))
    }

    /// The label selector of the cluster's pods of one component (broker, redis).
    fn selector(&self, component: &str) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
            self.name
        )
    }

    /// The broker pods, by name.
    async fn brokers(&self) -> Result<Vec<Pod>> {
        let mut pods = self
            .pods
            .list(&ListParams::default().labels(&self.selector("broker")))
            .await
            .context("listing broker pods")?
            .items;
        pods.sort_by_key(pod_name);
        Ok(pods)
    }

    /// Waits until exactly `n` broker pods exist, all Ready, each counting `n` members.
    async fn wait_brokers(&self, n: usize, limit: Duration) -> Result<Vec<Pod>> {
        let pods = poll(limit, &format!("{n} broker pods Ready"), || async {
            let pods = self.brokers().await?;
            let ready = pods.iter().filter(|p| pod_ready(p)).count();
            ensure!(
                pods.len() == n && ready == n,
                "{} broker pods, {ready} Ready",
                pods.len()
            );
            Ok(pods)
        })
        .await?;
        poll(
            MEMBERS_WITHIN,
            &format!("starling_cluster_members {n} on every pod"),
            || async {
                for pod in &pods {
                    let members = metric(pod_ip(pod)?, "starling_cluster_members").await?;
                    ensure!(members == n as f64, "{}: {members} members", pod_name(pod));
                }
                Ok(())
            },
        )
        .await?;
        Ok(pods)
    }

    /// Waits until the StatefulSet has `n` Ready pods, all of the current revision (no rollout
    /// under way), then until the brokers count `n` members.
    async fn wait_settled(&self, n: usize) -> Result<Vec<Pod>> {
        let sts_api: Api<StatefulSet> = Api::namespaced(self.client.clone(), self.ns);
        poll(READY_WITHIN, "the StatefulSet settled", || async {
            let sts = sts_api.get(self.name).await?;
            let status = sts.status.as_ref().context("no StatefulSet status")?;
            ensure!(
                status.observed_generation >= sts.metadata.generation
                    && status.current_revision == status.update_revision
                    && status.replicas == n as i32
                    && status.ready_replicas == Some(n as i32),
                "StatefulSet: {} replicas, {:?} ready, revision {:?} → {:?}",
                status.replicas,
                status.ready_replicas,
                status.current_revision,
                status.update_revision
            );
            Ok(())
        })
        .await?;
        self.wait_brokers(n, READY_WITHIN).await
    }

    async fn cluster_ready(&self) -> Result<MqttCluster> {
        let api: Api<MqttCluster> = Api::namespaced(self.client.clone(), self.ns);
        let mqc = api
            .get(self.name)
            .await
            .context("reading the MqttCluster")?;
        let status = mqc.status.as_ref().context("no status yet")?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        ensure!(
            ready.is_some_and(|c| c.status == "True"),
            "Ready condition: {:?}",
            ready.map(|c| (&c.status, &c.reason, &c.message))
        );
        Ok(mqc)
    }

    /// The address of the Service's `port` from outside the cluster: a node IP and the
    /// NodePort (the Service is a LoadBalancer; its NodePort works without a load balancer).
    async fn reached_from_outside(&self, port: u16) -> Result<SocketAddr> {
        let svc = Api::<Service>::namespaced(self.client.clone(), self.ns)
            .get(self.name)
            .await
            .with_context(|| format!("reading Service {}", self.name))?;
        let node_port = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.iter().find(|p| p.port == i32::from(port)))
            .and_then(|p| p.node_port)
            .with_context(|| format!("Service {} has no NodePort for {port}", self.name))?;
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .context("listing nodes")?;
        let ip = nodes
            .items
            .iter()
            .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .context("no node with an InternalIP")?
            .address
            .parse::<IpAddr>()
            .context("node IP")?;
        Ok(SocketAddr::new(ip, u16::try_from(node_port)?))
    }
}

/// The operator's autoscaling on connections, driven by opening and closing them: with
/// `spec.autoscaling` (3 to 4 brokers, 300 connections each), 1,000 device-like clients with
/// persistent sessions connect through the NodePort; the operator must scale to 4, the new pod
/// must fill up by rebalancing (every pod within 50 of the mean, no session lost), and once the
/// clients are gone it must scale back to 3, under a QoS 1 stream to persistent subscribers
/// (nothing acknowledged lost). `spec.autoscaling` is removed at the end.
async fn autoscaling_on_connections(
    kube: &Kube,
    record: &mut Record,
    outside: SocketAddr,
) -> Result<()> {
    const CLIENTS: usize = 1_000;
    const TARGET: usize = 300;
    let api: Api<MqttCluster> = Api::namespaced(kube.client.clone(), NS);
    let autoscaling = serde_json::json!({"spec": {"autoscaling": {
        "minReplicas": 3,
        "maxReplicas": 4,
        "targetConnectionsPerBroker": TARGET,
        "scaleDownStabilizationSeconds": 0,
    }}});
    api.patch(
        CLUSTER,
        &PatchParams::default(),
        &Patch::Merge(&autoscaling),
    )
    .await
    .context("setting spec.autoscaling")?;
    let condition = |mqc: &MqttCluster| {
        mqc.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Autoscaling"))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    poll(
        READY_WITHIN,
        "Autoscaling AtTarget with no clients",
        || async {
            let mqc = api.get(CLUSTER).await?;
            let autoscaling = condition(&mqc);
            ensure!(
                autoscaling
                    .as_ref()
                    .is_some_and(|(s, r, _)| s == "True" && r == "AtTarget"),
                "Autoscaling condition: {autoscaling:?}"
            );
            Ok(())
        },
    )
    .await?;

    let (username, password) = kube.credentials().await?;
    let mut fleet = Fleet::new(outside, "k8s-autoscale").with_credentials(&username, &password);
    let t = Instant::now();
    for i in 0..CLIENTS {
        fleet.add();
        if (i + 1) % 100 == 0 {
            // Waves, as a fleet connects: the workload's pace, not a wait for an event.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    poll(READY_WITHIN, "the autoscaling fleet connected", || async {
        let connected = fleet.tally.connected_once();
        ensure!(connected == CLIENTS, "{connected} of {CLIENTS} connected");
        Ok(())
    })
    .await?;
    record.figure(
        &format!("autoscaling: {CLIENTS} clients connected through the NodePort"),
        secs(t.elapsed()),
    );
    let t = Instant::now();
    let scaled = poll(READY_WITHIN, "the operator scaling to 4", || async {
        let mqc = api.get(CLUSTER).await?;
        ensure!(
            mqc.spec.replicas == 4,
            "spec.replicas {}; Autoscaling {:?}",
            mqc.spec.replicas,
            condition(&mqc)
        );
        Ok(mqc)
    })
    .await?;
    let decided = t.elapsed();
    // The status the scaling reconcile wrote (after its scale patch): what it counted.
    let scaled = poll(READY_WITHIN, "status.autoscaling saying 4", || async {
        let mqc = api.get(CLUSTER).await?;
        let desired = mqc
            .status
            .as_ref()
            .and_then(|s| s.autoscaling.as_ref())
            .map(|a| a.desired_replicas);
        ensure!(
            desired == Some(4),
            "status.autoscaling.desiredReplicas {desired:?}"
        );
        Ok(mqc)
    })
    .await
    .unwrap_or(scaled);
    let counted = scaled
        .status
        .as_ref()
        .and_then(|s| s.autoscaling.as_ref())
        .and_then(|a| a.connections);
    record.figure(
        &format!(
            "autoscaling 3→4 at {CLIENTS} connections (target {TARGET} per broker): spec.replicas set"
        ),
        format!("{} (connections counted: {counted:?})", secs(decided)),
    );
    kube.wait_settled(4).await?;
    record.figure("autoscaling 3→4: pods Ready, 4 members", secs(t.elapsed()));

    // The new pod fills up by rebalancing (tolerance: the brokers' min_excess, 50).
    let t = Instant::now();
    let spread = poll(READY_WITHIN, "every pod within 50 of the mean", || async {
        let mut counts = Vec::new();
        for pod in kube.brokers().await? {
            counts.push(metric(pod_ip(&pod)?, "starling_connections").await? as usize);
        }
        let total: usize = counts.iter().sum();
        let mean = CLIENTS / 4;
        ensure!(
            total == CLIENTS && counts.iter().all(|c| c.abs_diff(mean) <= 50),
            "connections per pod {counts:?}"
        );
        Ok(counts)
    })
    .await?;
    record.figure(
        "autoscaling 3→4: rebalanced, connections per pod",
        format!("{spread:?} after {}", secs(t.elapsed())),
    );
    any_pod_answers_for_every_pods_clients(kube, record, CLIENTS).await?;
    let lost = fleet.tally.sessions_lost();
    if lost > 0 {
        record.problem(format!(
            "autoscaling and rebalancing: {lost} reconnects found no session"
        ));
    }

    // The fleet goes while a QoS 1 stream runs to persistent subscribers (through the NodePort,
    // so some may be on the fourth pod): back to the minimum, the fourth pod evacuated before it
    // stops, nothing acknowledged lost.
    // The pod the scale-down removes, by UID: the operator's Event about it names it.
    let fourth = format!("{CLUSTER}-3");
    let fourth_uid = kube
        .brokers()
        .await?
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(fourth.as_str()))
        .and_then(|p| p.metadata.uid)
        .context("no fourth broker pod before the scale-down")?;
    let scaling = api.clone();
    stream_through_fault(
        kube,
        record,
        "autoscaled-down",
        outside,
        |pods, _hosts| async move {
            let _following = follow_logs(kube, &pods, "autoscaled-down");
            drop(fleet);
            let t = Instant::now();
            poll(READY_WITHIN, "the operator scaling back to 3", || async {
                let mqc = scaling.get(CLUSTER).await?;
                ensure!(
                    mqc.spec.replicas == 3,
                    "spec.replicas {}; Autoscaling {:?}",
                    mqc.spec.replicas,
                    condition(&mqc)
                );
                Ok(())
            })
            .await?;
            let decided = t.elapsed();
            kube.wait_settled(3).await?;
            Ok(vec![
                (
                    "fleet gone, spec.replicas 4→3 set by the operator".to_string(),
                    secs(decided),
                ),
                (
                    "4→3: fourth pod gone, 3 members".to_string(),
                    secs(t.elapsed()),
                ),
            ])
        },
    )
    .await?;

    // The operator followed the fourth pod's evacuation: an Event says how it went.
    let evacuation = evacuation_event(kube, &fourth, &fourth_uid).await?;
    record.figure("autoscaled-down: the operator's Event", evacuation);

    let off = serde_json::json!({"spec": {"autoscaling": null}});
    api.patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&off))
        .await
        .context("removing spec.autoscaling")?;
    poll(READY_WITHIN, "the Autoscaling condition gone", || async {
        let mqc = api.get(CLUSTER).await?;
        ensure!(condition(&mqc).is_none(), "still {:?}", condition(&mqc));
        Ok(())
    })
    .await?;
    Ok(())
}

/// The note of the operator's `Evacuating` or `Evacuated` Event about broker pod `pod` with UID
/// `uid` (its action names both, so an earlier pod of the same name does not count).
async fn evacuation_event(kube: &Kube, pod: &str, uid: &str) -> Result<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(kube.client.clone(), NS);
    let action = format!("Evacuate {pod} {}", &uid[..uid.len().min(8)]);
    poll(ACKS_WITHIN, "an Evacuating or Evacuated Event", || async {
        let found = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| matches!(e.reason.as_deref(), Some("Evacuating" | "Evacuated")))
            .find(|e| e.action.as_deref() == Some(action.as_str()))
            .and_then(|e| e.note);
        found.with_context(|| format!("no Evacuating or Evacuated Event with action {action:?}"))
    })
    .await
}

/// The admin API answers for the cluster from any pod: `ctl clients` run in the first broker
/// pod (as its preStop hook runs `ctl`, with the pod's token) lists `clients` clients spread over
/// every pod, and names no pod that did not answer (pods reach each other's admin port at the
/// pod IPs they share through Redis).
async fn any_pod_answers_for_every_pods_clients(
    kube: &Kube,
    record: &mut Record,
    clients: usize,
) -> Result<()> {
    use starling_broker::admin::api::ClientList;
    let pods = kube.brokers().await?;
    let pod = pods.first().context("no broker pod")?;
    let name = pod.metadata.name.clone().context("a pod without a name")?;
    // The hook's command starts with the binary, `ctl`, `--url U` and `--token-file F`.
    let hook: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .and_then(|c| c.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .context("the broker pod has no preStop command")?;
    ensure!(hook.len() >= 6, "preStop command {hook:?}");
    let t = Instant::now();
    let mut args: Vec<&str> = vec!["exec", "-n", NS, &name, "--"];
    args.extend(hook[..6].iter().map(String::as_str));
    args.extend(["--json", "clients"]);
    let list: ClientList =
        serde_json::from_str(&kubectl(&args).await?).context("reading ctl clients --json")?;
    let nodes: BTreeSet<&str> = list.clients.iter().map(|c| c.node.as_str()).collect();
    ensure!(
        list.unanswered.is_empty(),
        "pods that did not answer: {:?}",
        list.unanswered
    );
    ensure!(
        list.matched == clients && nodes.len() == pods.len(),
        "ctl clients in {name}: {} clients matched on {nodes:?}, expected {clients} on {} pods",
        list.matched,
        pods.len()
    );
    record.figure(
        "ctl clients in one pod: every pod's clients",
        format!(
            "{} clients on {} pods in {}",
            list.matched,
            nodes.len(),
            secs(t.elapsed())
        ),
    );
    Ok(())
}

/// Per pod (by IP): how many of the stream's subscriptions it holds and how many remote filters
/// it knows, to tell where clients landed and when their subscriptions are announced.
async fn snapshot(pods: &[Pod], name: &str) -> Result<Vec<f64>> {
    let mut values = Vec::new();
    for pod in pods {
        values.push(metric(pod_ip(pod)?, name).await?);
    }
    Ok(values)
}

/// Waits until every pod knows the filters subscribed on the other pods that gained
/// subscriptions since `subs_before`; returns how long that took.
async fn wait_routes(pods: &[Pod], subs_before: &[f64], remote_before: &[f64]) -> Result<Duration> {
    let t = Instant::now();
    let subs = snapshot(pods, "starling_subscriptions").await?;
    let hosts: Vec<usize> = (0..pods.len())
        .filter(|&i| subs[i] > subs_before[i])
        .collect();
    ensure!(!hosts.is_empty(), "no pod gained the subscriptions");
    poll(
        ROUTES_WITHIN,
        "the subscriptions announced to every pod",
        || async {
            let remote = snapshot(pods, "starling_cluster_remote_entries").await?;
            for (i, pod) in pods.iter().enumerate() {
                let others = hosts.iter().filter(|&&h| h != i).count() as f64;
                ensure!(
                    remote[i] >= remote_before[i] + others,
                    "{} knows {} remote filters, expected {}",
                    pod_name(pod),
                    remote[i],
                    remote_before[i] + others
                );
            }
            Ok(())
        },
    )
    .await?;
    Ok(t.elapsed())
}

fn describe(t: &Tally) -> String {
    format!(
        "published {}, acknowledged {}, per subscriber received {:?}, lost {}, duplicates with DUP {}, without DUP {}, longest gap {}",
        t.published,
        t.acked,
        t.subs.iter().map(|s| s.received).collect::<Vec<_>>(),
        t.lost(),
        t.subs.iter().map(|s| s.dup_copies).sum::<usize>(),
        t.dupless(),
        secs(t.recovery())
    )
}

fn check_tally(record: &mut Record, what: &str, t: &Tally) {
    record.figure(what, describe(t));
    if t.acked == 0 {
        record.problem(format!("{what}: no message was acknowledged"));
    }
    if t.lost() > 0 {
        let lost: Vec<String> = t
            .subs
            .iter()
            .filter(|s| s.lost_count > 0)
            .map(|s| format!("{}: {}", s.id, stream::ranges(&s.lost)))
            .collect();
        record.problem(format!(
            "{what}: {} acknowledged messages lost ({})",
            t.lost(),
            lost.join("; ")
        ));
    }
    if t.dupless() > 0 {
        let which: Vec<String> = t
            .subs
            .iter()
            .filter(|s| s.dupless > 0)
            .map(|s| format!("{}: {}", s.id, stream::ranges(&s.dupless_numbers)))
            .collect();
        record.problem(format!(
            "{what}: {} duplicates without DUP ({})",
            t.dupless(),
            which.join("; ")
        ));
    }
}

/// A QoS 1 stream through the Service's NodePort to persistent subscribers; `fault` runs once
/// the stream flows; the stream goes on until the fault is over and flows again.
async fn stream_through_fault<F, Fut>(
    kube: &Kube,
    record: &mut Record,
    prefix: &str,
    outside: SocketAddr,
    fault: F,
) -> Result<()>
where
    F: FnOnce(Vec<Pod>, Vec<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<(String, String)>>>,
{
    let pods = kube.brokers().await?;
    let subs_before = snapshot(&pods, "starling_subscriptions").await?;
    let remote_before = snapshot(&pods, "starling_cluster_remote_entries").await?;
    let mut stream = kube.stream(Version::V5, prefix, SUBSCRIBERS).await?;
    for k in 0..SUBSCRIBERS {
        stream
            .connect_subscriber(k, outside)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    wait_routes(&pods, &subs_before, &remote_before).await?;
    let subs_after = snapshot(&pods, "starling_subscriptions").await?;
    let hosts: Vec<usize> = (0..pods.len())
        .filter(|&i| subs_after[i] > subs_before[i])
        .collect();
    stream
        .start_publisher(outside)
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        stream
            .wait_received(RATE as usize, Duration::from_secs(30))
            .await,
        "the stream did not reach the subscribers"
    );
    let notes = fault(pods, hosts).await?;
    for (what, value) in notes {
        record.figure(&format!("{prefix}: {what}"), value);
    }
    let t = Instant::now();
    if !stream.wait_flowing((RATE / 10) as usize, RESUME).await {
        let b = stream.board();
        record.problem(format!(
            "{prefix}: the stream did not flow again within {RESUME:?} (subscribers connected {:?}, publisher connected {}, last errors {:?} / {:?})",
            b.subs.iter().map(|s| s.connected).collect::<Vec<_>>(),
            b.publisher.connected,
            b.subs.iter().map(|s| s.last_error.clone()).collect::<Vec<_>>(),
            b.publisher.last_error
        ));
    } else {
        record.figure(
            &format!("{prefix}: stream flowing again after the fault was over"),
            secs(t.elapsed()),
        );
    }
    // The stream's length after the fault: the workload, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = stream.finish(ACKS_WITHIN, DELIVER_WITHIN, QUIET).await;
    let problems = record.problems.len();
    check_tally(record, &format!("{prefix}: QoS 1 stream"), &tally);
    // A stream that stood still for long has its pods' logs kept too, to be explained.
    let stalled = tally.recovery() > STALL;
    if stalled {
        println!(
            "{prefix}: the stream stood still for {}",
            secs(tally.recovery())
        );
    }
    if record.problems.len() > problems || stalled {
        keep_logs(kube, prefix).await;
    }
    Ok(())
}

/// Saves every pod's log of the cluster (brokers, Redis) to `STARLING_E2E_LOG_DIR/<label>/`, at
/// once, before later steps replace the pods; without the variable, prints each broker's
/// warnings.
/// Follows the log of each of `pods` into `STARLING_E2E_LOG_DIR/<label>/<pod>.follow.log` until
/// the pod ends or the returned processes are dropped: the log of a pod a step removes (a
/// scale-down) is gone before [`keep_logs`] could read it. Nothing without the variable.
fn follow_logs(kube: &Kube, pods: &[Pod], label: &str) -> Vec<tokio::process::Child> {
    let Some(dir) = std::env::var_os("STARLING_E2E_LOG_DIR").map(|d| PathBuf::from(d).join(label))
    else {
        return Vec::new();
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        println!("following logs into {}: {e}", dir.display());
        return Vec::new();
    }
    pods.iter()
        .filter_map(|pod| {
            let name = pod_name(pod);
            let file = std::fs::File::create(dir.join(format!("{name}.follow.log"))).ok()?;
            tokio::process::Command::new("kubectl")
                .args(["logs", "-f", "-n", kube.ns, &name])
                .stdout(file)
                .kill_on_drop(true)
                .spawn()
                .ok()
        })
        .collect()
}

async fn keep_logs(kube: &Kube, label: &str) {
    let pods = match kube
        .pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={}", kube.name)))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            println!("listing pods for their logs: {e}");
            return;
        }
    };
    let dir = std::env::var_os("STARLING_E2E_LOG_DIR").map(|d| PathBuf::from(d).join(label));
    for pod in &pods {
        let name = pod_name(pod);
        let logs =
            match kubectl(&["logs", "-n", kube.ns, &name, "--all-containers", "--prefix"]).await {
                Ok(logs) => logs,
                Err(e) => format!("{e:#}"),
            };
        match &dir {
            Some(dir) => {
                let written = std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::write(dir.join(format!("{name}.log")), &logs));
                match written {
                    Ok(()) => println!("kept {}", dir.join(format!("{name}.log")).display()),
                    Err(e) => println!("keeping the log of {name}: {e}"),
                }
            }
            None => {
                println!("--- {name}: warnings (STARLING_E2E_LOG_DIR keeps whole logs)");
                for line in logs
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                {
                    println!("{line}");
                }
            }
        }
    }
}

/// For every pod: new persistent subscribers on it, a publisher on the next pod; everything
/// acknowledged must arrive (the split the issue saw after Redis was replaced).
async fn every_pod_reaches_every_pod(kube: &Kube, record: &mut Record, label: &str) -> Result<()> {
    let pods = kube.brokers().await?;
    let n = pods.len();
    let mut delivered = Vec::new();
    for i in 0..n {
        let j = (i + 1) % n;
        let prefix = format!("{label}-p{i}");
        let subs_before = snapshot(&pods, "starling_subscriptions").await?;
        let remote_before = snapshot(&pods, "starling_cluster_remote_entries").await?;
        let mut stream = kube.stream(Version::V311, &prefix, SUBSCRIBERS).await?;
        for k in 0..SUBSCRIBERS {
            stream
                .connect_subscriber(k, SocketAddr::new(pod_ip(&pods[i])?, MQTT_PORT))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        match wait_routes(&pods, &subs_before, &remote_before).await {
            Ok(took) => record.figure(
                &format!("{label}: subscriptions on {} announced", pod_name(&pods[i])),
                secs(took),
            ),
            Err(e) => record.problem(format!(
                "{label}: subscriptions on {} not announced: {e:#}",
                pod_name(&pods[i])
            )),
        }
        stream
            .start_publisher(SocketAddr::new(pod_ip(&pods[j])?, MQTT_PORT))
            .await
            .map_err(anyhow::Error::msg)?;
        // The stream's planned length: the workload, not a wait for an event.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tally = stream.finish(ACKS_WITHIN, DELIVER_WITHIN, QUIET).await;
        let what = format!(
            "{label}: subscribers on {}, publisher on {}",
            pod_name(&pods[i]),
            pod_name(&pods[j])
        );
        if tally.lost() > 0 {
            record.problem(format!(
                "{what}: {} of {} acknowledged messages did not arrive",
                tally.lost() / SUBSCRIBERS,
                tally.acked
            ));
            keep_logs(kube, &format!("{label}-p{i}")).await;
        }
        delivered.push(format!(
            "{}→{}: {}/{}",
            pod_name(&pods[j]),
            pod_name(&pods[i]),
            tally.acked - tally.lost() / SUBSCRIBERS,
            tally.acked
        ));
    }
    record.figure(
        &format!("{label}: new subscriptions, delivered/acknowledged per pod pair"),
        delivered.join(", "),
    );
    Ok(())
}

/// Whether `kind/name` (as `kubectl get -o name` prints it) is one of the objects the cluster
/// itself puts in every namespace: the default ServiceAccount and CA bundles (kube-root-ca.crt,
/// and openshift-service-ca.crt from OpenShift's controller-manager).
fn from_the_cluster(object: &str) -> bool {
    object == "serviceaccount/default"
        || (object.starts_with("configmap/") && object.ends_with(".crt"))
}

/// Removes what an earlier run left behind under this test's names.
async fn remove_leftovers(kube: &Kube) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(kube.client.clone());
    let ours = [NS, FULL_NS, OPERATOR_NS];
    let mut found = Vec::new();
    for ns in ours {
        if namespaces.get_opt(ns).await?.is_some() {
            found.push(ns);
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    println!("removing what an earlier run left in {}", found.join(", "));
    for ns in [NS, FULL_NS] {
        let _ = kubectl(&["delete", "mqc", "--all", "-n", ns, "--timeout=120s"]).await;
    }
    let _ = command("helm", &["uninstall", RELEASE, "-n", OPERATOR_NS, "--wait"]).await;
    let mut args = vec!["delete", "namespace", "--ignore-not-found", "--wait=false"];
    args.extend(ours);
    let _ = kubectl(&args).await;
    poll(READY_WITHIN, "the old namespaces gone", || async {
        for ns in ours {
            ensure!(namespaces.get_opt(ns).await?.is_none(), "{ns} still exists");
        }
        Ok(())
    })
    .await
}

/// Builds the images from this workspace's binaries and loads them with the configured command.
/// Where the broker and operator binaries are: `STARLING_E2E_BIN_DIR`, else this test's profile.
fn bin_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("STARLING_E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("target/<profile>")?
            .to_path_buf(),
    })
}

async fn build_and_load(load: &str, record: &mut Record) -> Result<()> {
    let bin_dir = bin_dir()?;
    let out = tempfile::tempdir()?;
    let t = Instant::now();
    let printed = command(
        "scripts/build-images.sh",
        &[
            "--bin-dir",
            &bin_dir.to_string_lossy(),
            "--out",
            &out.path().to_string_lossy(),
        ],
    )
    .await?;
    print!("{printed}");
    record.figure("images built (scripts/build-images.sh)", secs(t.elapsed()));
    let t = Instant::now();
    for name in ["starling-broker", "starling-operator"] {
        let archive = out.path().join(format!("{name}.tar"));
        command(
            "sh",
            &[
                "-c",
                &format!("{load} \"$1\""),
                "image-load",
                &archive.to_string_lossy(),
            ],
        )
        .await
        .with_context(|| format!("loading {name} with `{load}`"))?;
    }
    // The Redis image of the managed Redis with Sentinel: its scripts need a shell and
    // redis-cli, which the node cannot pull; scripts/redis-standin-image.py stands in.
    let archive = out.path().join("redis-standin.tar");
    command(
        "scripts/redis-standin-image.py",
        &[
            "--name",
            SENTINEL_IMAGE,
            "--out",
            &archive.to_string_lossy(),
        ],
    )
    .await?;
    command(
        "sh",
        &[
            "-c",
            &format!("{load} \"$1\""),
            "image-load",
            &archive.to_string_lossy(),
        ],
    )
    .await
    .with_context(|| format!("loading {SENTINEL_IMAGE} with `{load}`"))?;
    record.figure("images loaded", secs(t.elapsed()));
    Ok(())
}

/// Prints what a person would look at when something did not work.
async fn diagnose() {
    for args in [
        vec!["get", "pods,svc,sts,deploy,mqc", "-n", NS, "-o", "wide"],
        vec!["get", "pods", "-n", OPERATOR_NS, "-o", "wide"],
        vec!["get", "events", "-n", NS, "--sort-by=.lastTimestamp"],
        vec!["describe", "mqc", "-n", NS],
        vec![
            "logs",
            "-n",
            OPERATOR_NS,
            "deploy/starling-operator",
            "--tail=40",
        ],
        vec!["logs", "-n", NS, "-l", BROKERS, "--tail=30", "--prefix"],
        vec!["logs", "-n", NS, "-l", REDIS, "--tail=20", "--prefix"],
    ] {
        match kubectl(&args).await {
            Ok(out) => println!("$ kubectl {}\n{out}", args.join(" ")),
            Err(e) => println!("$ kubectl {}\n{e:#}", args.join(" ")),
        }
    }
}

/// Waits until nothing but what the cluster itself provides is left in namespace `ns`.
async fn wait_namespace_empty(ns: &str) -> Result<()> {
    poll(
        READY_WITHIN,
        &format!("everything gone from {ns}"),
        || async {
            let left = kubectl(&[
                "get",
                "pods,svc,sts,deploy,rs,cm,secret,pvc,pdb",
                "-n",
                ns,
                "-o",
                "name",
            ])
            .await?;
            let left: Vec<&str> = left.lines().filter(|l| !from_the_cluster(l)).collect();
            ensure!(left.is_empty(), "left in {ns}: {}", left.join(" "));
            Ok(())
        },
    )
    .await
}

/// A mosquitto client (`mosquitto_pub`, `mosquitto_sub`) over TLS to `addr`, trusting `ca`, as
/// `user` (name, password) or anonymously, MQTT 5.
async fn mosquitto(
    program: &str,
    addr: SocketAddr,
    ca: &Path,
    user: Option<(&str, &str)>,
    args: &[&str],
) -> Result<String> {
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let ca = ca.to_string_lossy();
    let mut all = vec!["-h", &host, "-p", &port, "--cafile", &ca, "-V", "5"];
    if let Some((name, password)) = user {
        all.extend(["-u", name, "-P", password]);
    }
    all.extend(args);
    command(program, &all).await
}

/// A self-signed certificate (and its key) for the full example's TLS listener, valid for the
/// node's address (clients come through the NodePort) and the Service's name.
async fn self_signed(node_ip: &str, cn: &str, key: &str, cert: &str) -> Result<()> {
    let subject = format!("/CN={cn}");
    let names = format!("subjectAltName=IP:{node_ip},DNS:{FULL}.{FULL_NS}.svc");
    command(
        "openssl",
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
            "-addext", &names, "-keyout", key, "-out", cert,
        ],
    )
    .await?;
    Ok(())
}

/// The node's InternalIP.
async fn node_ip(client: &Client) -> Result<String> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    Ok(nodes
        .items
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .context("no node with an InternalIP")?
        .address
        .clone())
}

/// The full example (operator/examples/mqttcluster.yaml) with the Secrets and ConfigMap its
/// header names, adapted to a small single-node cluster: 3 replicas instead of 5, no CPU and
/// memory requests, no PersistentVolume for Redis (no provisioner), one Redis pod instead of
/// Sentinel (the story's own cluster runs that), no ServiceMonitor (no Prometheus Operator). Checked: Ready with 3 members (gossip encrypted), MQTT over TLS through
/// the NodePort with a password (the certificate verified), anonymous and wrong-password
/// clients refused, the WebSocket listener upgrading with the `mqtt` subprotocol; then the
/// cluster is deleted and nothing of it is left.
async fn full_example(client: &Client, record: &mut Record) -> Result<()> {
    let kube = Kube::new(client.clone(), FULL_NS, FULL);
    kubectl(&["create", "namespace", FULL_NS]).await?;
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();

    // The node's address goes into the certificate, so that clients can verify it.
    let node_ip = node_ip(client).await?;
    self_signed(&node_ip, "starling-e2e", &path("tls.key"), &path("tls.crt")).await?;
    let password = "e2e-secret";
    let broker = bin_dir()?.join("starling-broker");
    let passwd = command(
        "sh",
        &[
            "-c",
            "printf %s \"$2\" | \"$1\" passwd alice",
            "passwd",
            &broker.to_string_lossy(),
            password,
        ],
    )
    .await?;
    let gossip_key = command("openssl", &["rand", "-base64", "32"]).await?;
    let (cert, key) = (path("tls.crt"), path("tls.key"));
    let users = format!("--from-literal=passwd={}", passwd.trim());
    let gossip = format!("--from-literal=key={}", gossip_key.trim());
    for args in [
        vec![
            "create",
            "secret",
            "tls",
            "mqtt-cert",
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        vec!["create", "secret", "generic", "mqtt-users", &users],
        vec![
            "create",
            "configmap",
            "mqtt-acl",
            "--from-literal=acl=user alice\ntopic readwrite demo/#\n",
        ],
        vec!["create", "secret", "generic", "mqtt-gossip", &gossip],
    ] {
        let mut args = args;
        args.extend(["-n", FULL_NS]);
        kubectl(&args).await?;
    }

    let text = std::fs::read_to_string(workspace().join("operator/examples/mqttcluster.yaml"))
        .context("reading operator/examples/mqttcluster.yaml")?;
    let first = text.split("\n---").next().unwrap_or_default();
    let mut mqc: serde_json::Value =
        serde_yaml_ng::from_str(first).context("parsing operator/examples/mqttcluster.yaml")?;
    ensure!(
        mqc["metadata"]["name"] == FULL,
        "the full example is no longer `{FULL}`"
    );
    mqc["metadata"]["namespace"] = FULL_NS.into();
    let spec = mqc["spec"]
        .as_object_mut()
        .context("the full example has no spec")?;
    spec.insert("replicas".into(), 3.into());
    spec.remove("resources");
    if let Some(managed) = spec
        .get_mut("redis")
        .and_then(|r| r.get_mut("managed"))
        .and_then(|m| m.as_object_mut())
    {
        managed.remove("persistence");
        managed.remove("resources");
        // One Redis pod: the story's own cluster runs the Sentinel part (sentinel_story).
        managed.remove("sentinel");
    }
    if let Some(redis) = spec.get_mut("redis").and_then(|r| r.as_object_mut()) {
        redis.remove("replication");
    }
    spec.insert(
        "monitoring".into(),
        serde_json::json!({"serviceMonitor": {"enabled": false}}),
    );
    std::fs::write(dir.path().join("mqc.json"), serde_json::to_vec(&mqc)?)?;
    let t = Instant::now();
    kubectl(&["apply", "-f", &path("mqc.json")]).await?;
    poll(READY_WITHIN, "the full example Ready", || {
        kube.cluster_ready()
    })
    .await?;
    kube.wait_brokers(3, READY_WITHIN).await?;
    record.figure(
        "full example (3 replicas, no requests, PV or ServiceMonitor): apply to Ready, 3 members with encrypted gossip",
        secs(t.elapsed()),
    );

    // TLS with a password, through the NodePort; a retained message, so that the subscriber
    // needs no timing with the publisher.
    let tls = kube.reached_from_outside(TLS_PORT).await?;
    let ca = dir.path().join("tls.crt");
    let alice = Some(("alice", password));
    // The NodePort routes to the pods once kube-proxy has their endpoints, which may come a
    // moment after they are Ready (a run saw "Connection refused" 3.2 s in); the retained
    // publish is the same each time.
    poll(ROUTES_WITHIN, "publishing over TLS as alice", || {
        mosquitto(
            "mosquitto_pub",
            tls,
            &ca,
            alice,
            &["-t", "demo/tls", "-m", "over-tls", "-q", "1", "-r"],
        )
    })
    .await?;
    let got = mosquitto(
        "mosquitto_sub",
        tls,
        &ca,
        alice,
        &["-t", "demo/tls", "-C", "1", "-W", "15"],
    )
    .await
    .context("subscribing over TLS as alice")?;
    ensure!(
        got.trim() == "over-tls",
        "the subscriber over TLS got {got:?}"
    );
    let anonymous = mosquitto(
        "mosquitto_pub",
        tls,
        &ca,
        None,
        &["-t", "demo/x", "-m", "x"],
    )
    .await;
    let wrong = mosquitto(
        "mosquitto_pub",
        tls,
        &ca,
        Some(("alice", "not-the-password")),
        &["-t", "demo/x", "-m", "x"],
    )
    .await;
    if anonymous.is_ok() || wrong.is_ok() {
        record.problem(format!(
            "full example: a client without the password was accepted (anonymous: {}, wrong password: {})",
            anonymous.is_ok(),
            wrong.is_ok()
        ));
    }
    mosquitto(
        "mosquitto_pub",
        tls,
        &ca,
        alice,
        &["-t", "demo/tls", "-n", "-q", "1", "-r"],
    )
    .await
    .context("clearing the retained message")?;

    // A renewed certificate and a changed password, written into their Secrets as cert-manager
    // or a user would: kubelet updates the mounted files and the running brokers reload them.
    // No pod may restart, and the old password must stop working.
    let before: BTreeMap<String, (Option<String>, i32)> = kube
        .brokers()
        .await?
        .iter()
        .map(|p| (pod_name(p), (p.metadata.uid.clone(), restarts(p))))
        .collect();
    self_signed(
        &node_ip,
        "starling-e2e-renewed",
        &path("renewed.key"),
        &path("renewed.crt"),
    )
    .await?;
    let new_password = "e2e-rotated";
    let new_passwd = command(
        "sh",
        &[
            "-c",
            "printf %s \"$2\" | \"$1\" passwd alice",
            "passwd",
            &broker.to_string_lossy(),
            new_password,
        ],
    )
    .await?;
    let replace = "kubectl create --dry-run=client -o yaml \"$@\" | kubectl apply -f -";
    let renewed_cert = path("renewed.crt");
    let renewed_key = path("renewed.key");
    let new_users = format!("--from-literal=passwd={}", new_passwd.trim());
    for args in [
        vec![
            "secret",
            "tls",
            "mqtt-cert",
            "--cert",
            &renewed_cert,
            "--key",
            &renewed_key,
        ],
        vec!["secret", "generic", "mqtt-users", &new_users],
    ] {
        let mut all = vec!["-c", replace, "replace", "-n", FULL_NS];
        all.extend(args);
        command("sh", &all).await?;
    }
    let t = Instant::now();
    let renewed_ca = dir.path().join("renewed.crt");
    let new_alice = Some(("alice", new_password));
    poll(
        SECRET_UPDATE_WITHIN,
        "the renewed certificate and new password served",
        || {
            mosquitto(
                "mosquitto_pub",
                tls,
                &renewed_ca,
                new_alice,
                &["-t", "demo/renewed", "-m", "x", "-q", "1"],
            )
        },
    )
    .await?;
    let reloaded = t.elapsed();
    let old_password = mosquitto(
        "mosquitto_pub",
        tls,
        &renewed_ca,
        alice,
        &["-t", "demo/renewed", "-m", "x"],
    )
    .await;
    let after: BTreeMap<String, (Option<String>, i32)> = kube
        .brokers()
        .await?
        .iter()
        .map(|p| (pod_name(p), (p.metadata.uid.clone(), restarts(p))))
        .collect();
    record.figure(
        "full example: certificate and password replaced in their Secrets, served by the running pods after",
        secs(reloaded),
    );
    if after != before {
        record.problem(format!(
            "full example: pods changed while Secrets were updated: {before:?} -> {after:?}"
        ));
    }
    if old_password.is_ok() {
        record.problem(
            "full example: the old password still works after the users Secret changed".to_string(),
        );
    }

    // The WebSocket listener answers an upgrade with the `mqtt` subprotocol.
    let ws = kube.reached_from_outside(WS_PORT).await?;
    let mut stream = tokio::net::TcpStream::connect(ws).await?;
    stream
        .write_all(
            format!(
                "GET /mqtt HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: c3RhcmxpbmctZTJlLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Protocol: mqtt\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head))
        .await
        .context("no answer to the WebSocket upgrade")??;
    let head = String::from_utf8_lossy(&head[..n]);
    ensure!(
        head.starts_with("HTTP/1.1 101"),
        "the WebSocket listener answered {head:?}"
    );
    record.figure(
        "full example: MQTT over TLS with a password through the NodePort, anonymous and wrong password refused, WebSocket upgrade",
        "ok",
    );

    let t = Instant::now();
    kubectl(&[
        "delete",
        "-n",
        FULL_NS,
        &format!("mqc/{FULL}"),
        "--wait=true",
        "--timeout=180s",
    ])
    .await?;
    kubectl(&[
        "delete",
        "-n",
        FULL_NS,
        "secret/mqtt-cert",
        "secret/mqtt-users",
        "secret/mqtt-gossip",
        "configmap/mqtt-acl",
    ])
    .await?;
    wait_namespace_empty(FULL_NS).await?;
    record.figure("full example deleted, every child gone", secs(t.elapsed()));
    kubectl(&["delete", "namespace", FULL_NS, "--wait=false"]).await?;
    Ok(())
}

/// The story; figures and problems go to `record`, a broken step ends it with an error.
async fn story(kube: &Kube, load: &str, record: &mut Record) -> Result<()> {
    remove_leftovers(kube).await?;
    build_and_load(load, record).await?;

    // Install the operator with the chart's defaults (the images just loaded carry the chart's
    // names and tags).
    let t = Instant::now();
    command(
        "helm",
        &[
            "install",
            RELEASE,
            "charts/starling-operator",
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .await?;
    record.figure("helm install --wait (operator Ready)", secs(t.elapsed()));

    // The minimal example, as the README says.
    kubectl(&["create", "namespace", NS]).await?;
    let t = Instant::now();
    kubectl(&[
        "apply",
        "-n",
        NS,
        "-f",
        "operator/examples/mqttcluster-minimal.yaml",
    ])
    .await?;
    poll(READY_WITHIN, "MqttCluster Ready", || kube.cluster_ready()).await?;
    let ready = t.elapsed();
    let pods = kube.wait_brokers(3, READY_WITHIN).await?;
    record.figure("minimal MqttCluster: apply to Ready=True", secs(ready));
    record.figure(
        "minimal MqttCluster: apply to 3 pods counting 3 members",
        secs(t.elapsed()),
    );
    let restarted: Vec<String> = pods
        .iter()
        .filter(|p| restarts(p) > 0)
        .map(|p| format!("{} ({}x)", pod_name(p), restarts(p)))
        .collect();
    record.figure(
        "broker pod restarts on a fresh install",
        if restarted.is_empty() {
            "none".to_string()
        } else {
            restarted.join(", ")
        },
    );
    if !restarted.is_empty() {
        // What the first container of a restarted pod said before it ended.
        let mut said = String::new();
        if let Some(pod) = pods.iter().find(|p| restarts(p) > 0) {
            let name = pod_name(pod);
            let logs = kubectl(&["logs", "-n", NS, &name, "--previous", "--tail=5"])
                .await
                .unwrap_or_else(|e| format!("{e:#}"));
            said = format!("; {name}'s previous container ended with:\n{}", logs.trim());
        }
        record.problem(format!(
            "broker pods restarted on a fresh install: {}{said}",
            restarted.join(", ")
        ));
    }

    // MQTT through the Service from outside the pods.
    let outside = kube.reached_from_outside(MQTT_PORT).await?;
    println!("MQTT from outside: {outside} (node IP and NodePort)");
    let subs_before = snapshot(&pods, "starling_subscriptions").await?;
    let remote_before = snapshot(&pods, "starling_cluster_remote_entries").await?;
    let mut stream = kube.stream(Version::V311, "k8s-svc", 1).await?;
    stream
        .connect_subscriber(0, outside)
        .await
        .map_err(anyhow::Error::msg)?;
    wait_routes(&pods, &subs_before, &remote_before).await?;
    stream
        .start_publisher(outside)
        .await
        .map_err(anyhow::Error::msg)?;
    // The stream's planned length: the workload, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = stream.finish(ACKS_WITHIN, DELIVER_WITHIN, QUIET).await;
    check_tally(record, "MQTT through the NodePort", &tally);

    // Scale 3 → 5 → 3 → 2, then the example HorizontalPodAutoscaler (aimed at this cluster)
    // drives the scale subresource: its minReplicas (3) raises the cluster back to 3 (no metrics
    // server is needed for that; the CPU target itself needs one). Pods that stay must not be
    // restarted by the membership change.
    let mut hpa: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(workspace().join("operator/examples/mqttcluster-hpa.yaml"))
            .context("reading operator/examples/mqttcluster-hpa.yaml")?,
    )
    .context("parsing operator/examples/mqttcluster-hpa.yaml")?;
    hpa["metadata"]["name"] = CLUSTER.into();
    hpa["metadata"]["namespace"] = NS.into();
    hpa["spec"]["scaleTargetRef"]["name"] = CLUSTER.into();
    let min = hpa["spec"]["minReplicas"]
        .as_u64()
        .context("the example HPA has no minReplicas")? as usize;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(hpa)?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(kube.client.clone(), NS);
    for (from, to) in [(3usize, 5usize), (5, 3), (3, 2), (2, min)] {
        let survivors: BTreeMap<String, Option<String>> = kube
            .brokers()
            .await?
            .iter()
            .take(from.min(to))
            .map(|p| (pod_name(p), p.metadata.uid.clone()))
            .collect();
        let t = Instant::now();
        let how = if to == min && from == 2 {
            hpas.create(&PostParams::default(), &hpa)
                .await
                .context("creating the HorizontalPodAutoscaler")?;
            format!("the example HPA (minReplicas {min})")
        } else {
            kubectl(&[
                "scale",
                "-n",
                NS,
                &format!("mqc/{CLUSTER}"),
                &format!("--replicas={to}"),
            ])
            .await?;
            "kubectl scale".to_string()
        };
        kube.wait_brokers(to, READY_WITHIN).await?;
        record.figure(
            &format!(
                "scale {from}→{to} by {how}: pods Ready, starling_cluster_members {to} on each"
            ),
            secs(t.elapsed()),
        );
        let settled = kube.wait_settled(to).await;
        let replaced: Vec<String> = kube
            .brokers()
            .await?
            .iter()
            .filter(|p| {
                survivors
                    .get(&pod_name(p))
                    .is_some_and(|uid| *uid != p.metadata.uid)
            })
            .map(pod_name)
            .collect();
        if !replaced.is_empty() {
            record.problem(format!(
                "scale {from}→{to} restarted pods that stay: {}",
                replaced.join(", ")
            ));
        }
        settled?;
        poll(READY_WITHIN, "MqttCluster Ready after scaling", || {
            kube.cluster_ready()
        })
        .await?;
    }
    hpas.delete(CLUSTER, &DeleteParams::default())
        .await
        .context("deleting the HorizontalPodAutoscaler")?;
    autoscaling_on_connections(kube, record, outside).await?;

    // A broker pod deleted under a stream.
    stream_through_fault(
        kube,
        record,
        "broker-pod-deleted",
        outside,
        |pods, hosts| async move {
            let victim = pod_name(&pods[hosts[0]]);
            let old_uid = pods[hosts[0]].metadata.uid.clone();
            let t = Instant::now();
            kubectl(&["delete", "pod", "-n", NS, &victim, "--wait=false"]).await?;
            poll(
                READY_WITHIN,
                "the deleted pod replaced and Ready",
                || async {
                    let pods = kube.brokers().await?;
                    let back = pods
                        .iter()
                        .find(|p| pod_name(p) == victim)
                        .context("not recreated yet")?;
                    ensure!(back.metadata.uid != old_uid, "the old pod still exists");
                    ensure!(pod_ready(back), "not Ready");
                    Ok(())
                },
            )
            .await?;
            let replaced = t.elapsed();
            kube.wait_brokers(3, MEMBERS_WITHIN).await?;
            // The pod held a stream client: the operator's Event counts it among those asked.
            let evacuation =
                evacuation_event(kube, &victim, old_uid.as_deref().unwrap_or_default()).await?;
            ensure!(
                !evacuation.contains("(0 asked)") && !evacuation.contains("asked 0 clients"),
                "the deleted pod held a stream client, yet: {evacuation}"
            );
            Ok(vec![
                ("the operator's Event".to_string(), evacuation),
                ("deleted".to_string(), victim),
                ("pod replaced and Ready".to_string(), secs(replaced)),
                ("3 members again".to_string(), secs(t.elapsed())),
            ])
        },
    )
    .await?;
    every_pod_reaches_every_pod(kube, record, "after-broker-pod-deleted").await?;

    // The Redis pod deleted under a stream.
    stream_through_fault(
        kube,
        record,
        "redis-pod-deleted",
        outside,
        |_, _| async move {
            let old: Vec<String> = kube
                .pods
                .list(&ListParams::default().labels(&kube.selector("redis")))
                .await?
                .items
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            ensure!(old.len() == 1, "{} Redis pods", old.len());
            let t = Instant::now();
            kubectl(&[
                "delete",
                "pod",
                "-n",
                NS,
                "-l",
                &kube.selector("redis"),
                "--wait=false",
            ])
            .await?;
            poll(READY_WITHIN, "a new Redis pod Ready", || async {
                let pods = kube
                    .pods
                    .list(&ListParams::default().labels(&kube.selector("redis")))
                    .await?
                    .items;
                ensure!(
                    pods.iter().any(|p| pod_ready(p)
                        && p.metadata.uid.as_ref().is_some_and(|u| !old.contains(u))),
                    "no new Ready Redis pod"
                );
                Ok(())
            })
            .await?;
            let redis = t.elapsed();
            kube.wait_brokers(3, READY_WITHIN).await?;
            Ok(vec![
                ("new Redis pod Ready".to_string(), secs(redis)),
                ("brokers Ready again".to_string(), secs(t.elapsed())),
            ])
        },
    )
    .await?;
    every_pod_reaches_every_pod(kube, record, "after-redis-pod-deleted").await?;

    sentinel_story(kube, record, outside).await?;

    // A spec change rolls the pods, one at a time, with the new configuration.
    let sts_api: Api<StatefulSet> = Api::namespaced(kube.client.clone(), NS);
    let hash = |sts: &StatefulSet| {
        sts.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
    };
    let old_hash = hash(&sts_api.get(CLUSTER).await?);
    let old_pods: BTreeSet<String> = kube
        .brokers()
        .await?
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let t = Instant::now();
    kubectl(&[
        "patch",
        "-n",
        NS,
        &format!("mqc/{CLUSTER}"),
        "--type=merge",
        "-p",
        r#"{"spec":{"broker":{"maxQueuedMessages":5000}}}"#,
    ])
    .await?;
    poll(READY_WITHIN, "the rollout of the spec change", || async {
        let sts = sts_api.get(CLUSTER).await?;
        ensure!(hash(&sts) != old_hash, "config hash unchanged");
        let status = sts.status.as_ref().context("no StatefulSet status")?;
        ensure!(
            status.update_revision.is_some() && status.current_revision == status.update_revision,
            "revision {:?} → {:?}",
            status.current_revision,
            status.update_revision
        );
        let pods = kube.brokers().await?;
        ensure!(
            pods.len() == 3
                && pods.iter().all(|p| pod_ready(p)
                    && p.metadata
                        .uid
                        .as_ref()
                        .is_some_and(|u| !old_pods.contains(u))),
            "not every pod replaced and Ready"
        );
        Ok(())
    })
    .await?;
    kube.wait_brokers(3, MEMBERS_WITHIN).await?;
    record.figure(
        "spec change (broker.maxQueuedMessages): all 3 pods replaced, Ready, 3 members",
        secs(t.elapsed()),
    );
    poll(READY_WITHIN, "MqttCluster Ready after the roll", || {
        kube.cluster_ready()
    })
    .await?;

    full_example(&kube.client, record).await?;

    // Uninstall: the MqttCluster, then the chart; nothing may be left.
    let t = Instant::now();
    kubectl(&[
        "delete",
        "-n",
        NS,
        &format!("mqc/{CLUSTER}"),
        "--wait=true",
        "--timeout=180s",
    ])
    .await?;
    wait_namespace_empty(NS).await?;
    record.figure("MqttCluster deleted, every child gone", secs(t.elapsed()));
    let t = Instant::now();
    command("helm", &["uninstall", RELEASE, "-n", OPERATOR_NS, "--wait"]).await?;
    poll(READY_WITHIN, "the operator's objects gone", || async {
        let left = kubectl(&[
            "get",
            "pods,svc,deploy,rs,sa,role,rolebinding,cm,secret",
            "-n",
            OPERATOR_NS,
            "-o",
            "name",
        ])
        .await?;
        let left: Vec<&str> = left.lines().filter(|l| !from_the_cluster(l)).collect();
        ensure!(left.is_empty(), "left in {OPERATOR_NS}: {}", left.join(" "));
        let cluster_wide =
            kubectl(&["get", "clusterrole,clusterrolebinding", "-o", "name"]).await?;
        let cluster_wide: Vec<&str> = cluster_wide
            .lines()
            .filter(|l| l.contains("starling"))
            .collect();
        ensure!(
            cluster_wide.is_empty(),
            "cluster-wide leftovers: {}",
            cluster_wide.join(" ")
        );
        Ok(())
    })
    .await?;
    record.figure(
        "helm uninstall: operator, RBAC gone (the CRD stays, as Helm never deletes CRDs)",
        secs(t.elapsed()),
    );
    kubectl(&[
        "delete",
        "namespace",
        NS,
        OPERATOR_NS,
        "--wait=true",
        "--timeout=180s",
    ])
    .await?;
    Ok(())
}

/// The primary's pod, as the sentinel of Redis pod `asked` names it (`None` when it does not
/// answer).
async fn sentinel_primary(kube: &Kube, asked: &str) -> Option<String> {
    let script = format!(
        "REDISCLI_AUTH=$(cat /etc/redis-auth/password) redis-cli -p 26379 --raw \
         sentinel get-master-addr-by-name {}",
        kube.name
    );
    let answer = kubectl(&[
        "exec", "-n", kube.ns, asked, "-c", "sentinel", "--", "sh", "-c", &script,
    ])
    .await
    .ok()?;
    let host = answer.lines().next()?.trim();
    // <pod>.<service>.<namespace>.svc
    host.split('.')
        .next()
        .filter(|pod| !pod.is_empty())
        .map(str::to_string)
}

/// The role (`master`, `slave`) the Redis of pod `pod` reports.
async fn redis_role(kube: &Kube, pod: &str) -> Result<String> {
    let answer = kubectl(&[
        "exec",
        "-n",
        kube.ns,
        pod,
        "-c",
        "redis",
        "--",
        "sh",
        "-c",
        "REDISCLI_AUTH=$(cat /etc/redis-auth/password) redis-cli --raw info replication",
    ])
    .await?;
    answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("role:").map(str::to_string))
        .with_context(|| format!("{pod} reports no role"))
}

/// Waits until the MqttCluster's `RedisReplicated` condition is `True` and names `primary` as
/// the primary the brokers use; returns its message.
async fn redis_replicated(kube: &Kube, primary: &str) -> Result<String> {
    let api: Api<MqttCluster> = Api::namespaced(kube.client.clone(), kube.ns);
    poll(READY_WITHIN, "condition RedisReplicated", || async {
        let mqc = api.get(kube.name).await?;
        let condition = mqc
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "RedisReplicated"))
            .cloned()
            .context("no RedisReplicated condition")?;
        ensure!(
            condition.status == "True"
                && condition
                    .message
                    .starts_with(&format!("the brokers use primary {primary};")),
            "RedisReplicated {}: {}",
            condition.status,
            condition.message
        );
        Ok(condition.message)
    })
    .await
}

/// Turns on the managed Redis with Sentinel (three Redis pods, each with a sentinel, and
/// acknowledgements that wait for a replica), then deletes the primary's pod under a QoS 1
/// stream: the sentinels promote a replica, the brokers follow it without a restart, the pod
/// comes back as a replica, and no acknowledged message is lost.
async fn sentinel_story(kube: &Kube, record: &mut Record, outside: SocketAddr) -> Result<()> {
    let redis_sets: Api<StatefulSet> = Api::namespaced(kube.client.clone(), kube.ns);
    let redis_name = format!("{}-redis", kube.name);
    let old_brokers: BTreeSet<String> = kube
        .brokers()
        .await?
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let t = Instant::now();
    let patch = serde_json::json!({"spec": {"redis": {
        "managed": {"image": SENTINEL_IMAGE, "sentinel": {"downAfterMilliseconds": SENTINEL_DOWN_AFTER_MS}},
        "replication": {"waitReplicas": 1, "waitTimeoutMs": 2000},
    }}});
    kubectl(&[
        "patch",
        "-n",
        kube.ns,
        &format!("mqc/{}", kube.name),
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])
    .await?;
    poll(
        READY_WITHIN,
        "3 Redis pods with sentinels Ready",
        || async {
            let set = redis_sets.get(&redis_name).await?;
            let ready = set.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            ensure!(ready == 3, "{ready} of 3 Redis pods ready");
            Ok(())
        },
    )
    .await?;
    record.figure("Sentinel turned on: 3 Redis pods Ready", secs(t.elapsed()));
    // The brokers roll onto the sentinels (their configuration changed).
    poll(
        READY_WITHIN,
        "the brokers rolled onto the sentinels",
        || async {
            let pods = kube.brokers().await?;
            ensure!(
                pods.len() == 3
                    && pods.iter().all(|p| pod_ready(p)
                        && p.metadata
                            .uid
                            .as_ref()
                            .is_some_and(|u| !old_brokers.contains(u))),
                "not every broker pod replaced and Ready"
            );
            Ok(())
        },
    )
    .await?;
    kube.wait_brokers(3, MEMBERS_WITHIN).await?;
    poll(READY_WITHIN, "MqttCluster Ready on Sentinel", || {
        kube.cluster_ready()
    })
    .await?;
    record.figure(
        "Sentinel turned on: brokers rolled onto it, 3 members, Ready",
        secs(t.elapsed()),
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(kube.client.clone(), kube.ns);
    if deployments.get_opt(&redis_name).await?.is_some() {
        record.problem(format!(
            "the one-pod Redis Deployment {redis_name} is still there"
        ));
    }
    every_pod_reaches_every_pod(kube, record, "sentinel-on").await?;
    let first = sentinel_primary(kube, &format!("{}-redis-1", kube.name))
        .await
        .context("the sentinels name no primary")?;
    let message = redis_replicated(kube, &first).await?;
    record.figure("Sentinel on: condition RedisReplicated", message);

    stream_through_fault(
        kube,
        record,
        "redis-primary-deleted",
        outside,
        |_, _| async move {
            let asked = format!("{}-redis-1", kube.name);
            let primary = sentinel_primary(kube, &asked)
                .await
                .context("the sentinels name no primary")?;
            let old_uid = kube.pods.get(&primary).await?.metadata.uid;
            let t = Instant::now();
            kubectl(&["delete", "pod", "-n", kube.ns, &primary, "--wait=false"]).await?;
            // Asked of a pod that stays.
            let survivor = (0..3)
                .map(|i| format!("{}-redis-{i}", kube.name))
                .find(|p| *p != primary)
                .context("a surviving Redis pod")?;
            let promoted = poll(READY_WITHIN, "a replica promoted", || async {
                match sentinel_primary(kube, &survivor).await {
                    Some(p) if p != primary => Ok(p),
                    other => bail!("the sentinels name {other:?}"),
                }
            })
            .await?;
            let failover = t.elapsed();
            poll(
                READY_WITHIN,
                "the old primary's pod back as a replica",
                || async {
                    let pod = kube.pods.get(&primary).await?;
                    ensure!(pod.metadata.uid != old_uid, "not replaced yet");
                    ensure!(pod_ready(&pod), "not Ready");
                    let role = redis_role(kube, &primary).await?;
                    ensure!(role == "slave", "its Redis is a {role}");
                    Ok(())
                },
            )
            .await?;
            let back = t.elapsed();
            kube.wait_brokers(3, READY_WITHIN).await?;
            let condition = redis_replicated(kube, &promoted).await?;
            Ok(vec![
                ("condition RedisReplicated".to_string(), condition),
                ("deleted primary".to_string(), primary),
                (
                    format!("{promoted} promoted by the sentinels"),
                    secs(failover),
                ),
                ("deleted pod back as a replica".to_string(), secs(back)),
            ])
        },
    )
    .await?;
    every_pod_reaches_every_pod(kube, record, "after-redis-primary-deleted").await?;
    poll(READY_WITHIN, "MqttCluster Ready after the failover", || {
        kube.cluster_ready()
    })
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster and an image-load command: scripts/kube-e2e.sh"]
async fn users_story_on_real_pods() {
    let (Some(_), Ok(load)) = (
        std::env::var_os("KUBECONFIG"),
        std::env::var("STARLING_E2E_IMAGE_LOAD"),
    ) else {
        panic!(
            "DID NOT RUN: set KUBECONFIG (a cluster with a Ready node) and STARLING_E2E_IMAGE_LOAD \
             (e.g. 'kind load image-archive'), or use scripts/kube-e2e.sh"
        );
    };
    let client = Client::try_default()
        .await
        .expect("a client for the cluster in KUBECONFIG");
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("DID NOT RUN: listing the cluster's nodes");
    assert!(
        nodes.items.iter().any(|n| n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))),
        "DID NOT RUN: the cluster has no Ready node"
    );
    let kube = Kube::new(client, NS, CLUSTER);
    let mut record = Record::default();
    let started = Instant::now();
    let result = story(&kube, &load, &mut record).await;
    if result.is_err() || !record.problems.is_empty() {
        diagnose().await;
    }
    record.figure("whole story", secs(started.elapsed()));

    let mut report = String::new();
    for (what, value) in &record.figures {
        report.push_str(&format!("{what}: {value}\n"));
    }
    println!("\n== figures ==\n{report}");
    if let Some(path) = std::env::var_os("STARLING_E2E_REPORT") {
        let line = format!(
            "--- run at unix {} ---\n{report}{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            record
                .problems
                .iter()
                .map(|p| format!("PROBLEM {p}\n"))
                .collect::<String>()
        );
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            println!("could not append to {}: {e}", PathBuf::from(path).display());
        }
    }
    if std::env::var_os("STARLING_E2E_KEEP").is_none() && result.is_err() {
        println!("removing what this run installed (STARLING_E2E_KEEP=1 keeps it)");
        if let Err(e) = remove_leftovers(&kube).await {
            println!("clean-up: {e:#}");
        }
    }
    if let Err(e) = result {
        panic!(
            "the story broke: {e:#}\nproblems seen before: {:#?}",
            record.problems
        );
    }
    assert!(
        record.problems.is_empty(),
        "problems on real pods:\n{}",
        record.problems.join("\n")
    );
}

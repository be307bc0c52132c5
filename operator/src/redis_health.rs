//! What the sentinels of a managed Redis with Sentinel say, for the status: which pod is the
//! primary (the one the brokers use: they ask the same sentinels), which replicas are linked to
//! it, and how many sentinels see one another. [`ask`] reads it over the network (Redis'
//! `SENTINEL MASTER` and `SENTINEL REPLICAS`); [`assess`] turns it into the `RedisReplicated`
//! condition's status, reason and message, without I/O.

use futures::future::BoxFuture;
use redis::IntoConnectionInfo;
use std::sync::Arc;
use std::time::Duration;

/// How long one sentinel may take to connect and answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the first sentinel that answered says of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelView {
    /// The sentinel that answered (`host:port`).
    pub asked: String,
    /// The primary's host name (`POD.SERVICE.NS.svc` for the managed Redis).
    pub primary: String,
    /// Whether this sentinel holds the primary down (subjectively or agreed).
    pub primary_down: bool,
    /// The replicas it knows.
    pub replicas: Vec<ReplicaView>,
    /// Sentinels it knows, itself included.
    pub sentinels: u32,
}

/// One replica as a sentinel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// Its host name.
    pub host: String,
    /// Linked to the primary and not held down.
    pub in_sync: bool,
}

/// Reads the view of a group: `(sentinels as host:port, master name, password)`; replaced in
/// the controller's tests, which have no sentinels.
pub type SentinelReader = Arc<
    dyn Fn(Vec<String>, String, String) -> BoxFuture<'static, Result<SentinelView, String>>
        + Send
        + Sync,
>;

/// The reader that asks the sentinels over the network.
pub fn network_reader() -> SentinelReader {
    Arc::new(|sentinels, master, password| Box::pin(ask(sentinels, master, password)))
}

/// Asks the sentinels in order until one answers with the group's primary and replicas.
pub async fn ask(
    sentinels: Vec<String>,
    master: String,
    password: String,
) -> Result<SentinelView, String> {
    let mut errors = Vec::new();
    for address in &sentinels {
        match tokio::time::timeout(ASK_TIMEOUT, ask_one(address, &master, &password)).await {
            Ok(Ok(view)) => return Ok(view),
            Ok(Err(e)) => errors.push(format!("{address}: {e}")),
            Err(_) => errors.push(format!("{address}: no answer within {ASK_TIMEOUT:?}")),
        }
    }
    Err(format!("no sentinel answered ({})", errors.join("; ")))
}

async fn ask_one(address: &str, master: &str, password: &str) -> Result<SentinelView, String> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let info = (host, port)
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    let settings = info.redis_settings().clone().set_password(password);
    let client =
        redis::Client::open(info.set_redis_settings(settings)).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let primary: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    view_from(address, &primary, &replicas)
}

/// The value of `key` in a sentinel's flat field/value reply.
fn field<'a>(fields: &'a [String], key: &str) -> Option<&'a str> {
    fields
        .chunks_exact(2)
        .find(|pair| pair[0] == key)
        .map(|pair| pair[1].as_str())
}

fn held_down(flags: &str) -> bool {
    flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
}

/// A view from the replies to `SENTINEL MASTER` and `SENTINEL REPLICAS`.
pub fn view_from(
    asked: &str,
    primary: &[String],
    replicas: &[Vec<String>],
) -> Result<SentinelView, String> {
    let host = field(primary, "ip").ok_or("the sentinel names no primary")?;
    let other_sentinels: u32 = field(primary, "num-other-sentinels")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let replicas = replicas
        .iter()
        .filter_map(|r| {
            let host = field(r, "ip")?.to_string();
            let flags = field(r, "flags").unwrap_or("");
            let linked = field(r, "master-link-status") == Some("ok");
            Some(ReplicaView {
                host,
                in_sync: linked && !held_down(flags),
            })
        })
        .collect();
    Ok(SentinelView {
        asked: asked.to_string(),
        primary: host.to_string(),
        primary_down: held_down(field(primary, "flags").unwrap_or("")),
        replicas,
        sentinels: other_sentinels + 1,
    })
}

/// The `RedisReplicated` condition for a group of `pods` Redis pods (each with a sentinel):
/// `(true, reason, message)` when the primary is up and every other pod replicates it in sync
/// and every sentinel sees the others.
pub fn assess(view: &Result<SentinelView, String>, pods: u32) -> (bool, &'static str, String) {
    let view = match view {
        Ok(view) => view,
        Err(e) => return (false, "SentinelsUnreachable", e.clone()),
    };
    // A pod's DNS name is named by its pod (the first label); an address stays whole.
    let pod = |host: &str| match host.parse::<std::net::IpAddr>() {
        Ok(_) => host.to_string(),
        Err(_) => host.split('.').next().unwrap_or(host).to_string(),
    };
    let in_sync = view.replicas.iter().filter(|r| r.in_sync).count();
    let wanted = pods.saturating_sub(1) as usize;
    let message = format!(
        "the brokers use primary {}; {in_sync} of {wanted} replicas in sync; {} of {pods} sentinels see one another",
        pod(&view.primary),
        view.sentinels
    );
    if view.primary_down {
        (false, "PrimaryDown", message)
    } else if in_sync < wanted {
        (false, "ReplicasBehind", message)
    } else if view.sentinels < pods {
        (false, "SentinelsMissing", message)
    } else {
        (true, "Replicated", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn primary(flags: &str, others: &str) -> Vec<String> {
        strings(&[
            "name",
            "demo",
            "ip",
            "demo-redis-1.demo-redis-nodes.iot.svc",
            "port",
            "6379",
            "flags",
            flags,
            "num-other-sentinels",
            others,
        ])
    }

    fn replica(host: &str, flags: &str, link: &str) -> Vec<String> {
        strings(&["ip", host, "flags", flags, "master-link-status", link])
    }

    #[test]
    fn a_healthy_group_names_its_primary_pod() {
        let view = view_from(
            "s:26379",
            &primary("master", "2"),
            &[
                replica("demo-redis-0.x", "slave", "ok"),
                replica("demo-redis-2.x", "slave", "ok"),
            ],
        );
        let (ok, reason, message) = assess(&view, 3);
        assert!(ok, "{message}");
        assert_eq!(reason, "Replicated");
        assert_eq!(
            message,
            "the brokers use primary demo-redis-1; 2 of 2 replicas in sync; 3 of 3 sentinels see one another"
        );
    }

    #[test]
    fn what_is_wrong_is_named() {
        let behind = view_from(
            "s:26379",
            &primary("master", "2"),
            &[
                replica("demo-redis-0.x", "slave", "err"),
                replica("demo-redis-2.x", "s_down,slave", "ok"),
            ],
        );
        assert_eq!(assess(&behind, 3).1, "ReplicasBehind");
        assert!(assess(&behind, 3).2.contains("0 of 2 replicas in sync"));
        let down = view_from("s:26379", &primary("s_down,master", "2"), &[]);
        assert_eq!(assess(&down, 3).1, "PrimaryDown");
        let alone = view_from(
            "s:26379",
            &primary("master", "0"),
            &[replica("a", "slave", "ok"), replica("b", "slave", "ok")],
        );
        assert_eq!(assess(&alone, 3).1, "SentinelsMissing");
        let unreachable = Err("no sentinel answered".to_string());
        assert_eq!(
            assess(&unreachable, 3),
            (
                false,
                "SentinelsUnreachable",
                "no sentinel answered".to_string()
            )
        );
        assert!(view_from("s:26379", &strings(&["flags", "master"]), &[]).is_err());
        let by_address = view_from(
            "s:26379",
            &strings(&[
                "ip",
                "10.0.0.7",
                "flags",
                "master",
                "num-other-sentinels",
                "2",
            ]),
            &[],
        );
        assert!(assess(&by_address, 1)
            .2
            .starts_with("the brokers use primary 10.0.0.7;"));
    }
}

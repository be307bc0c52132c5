//! A Redis connection whose server went silent without closing it (a Redis replaced behind the
//! same address, a partition) is replaced after a timeout: against a real `redis-server` behind
//! a proxy that can leave its established connections hanging while new ones go through.

mod common_redis;

use common_redis::RedisServer;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use starling_broker::store::redis::renewing::RenewingConnection;
use starling_broker::store::redis::target::RedisTarget;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy to `upstream`; each send on the returned channel strands every connection made so
/// far (they stay open and silent) while later ones are forwarded.
async fn stranding_proxy(upstream: SocketAddr) -> (SocketAddr, watch::Sender<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("proxy address");
    let (strand, stranded) = watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut stranded = stranded.clone();
            let generation = *stranded.borrow_and_update();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let strand_now = async {
                    let _ = stranded.wait_for(|g| *g != generation).await;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                    () = strand_now => {}
                }
                // Silent, and open until the test ends.
                let _ = stranded.wait_for(|_| false).await;
                drop((inbound, outbound));
            });
        }
    });
    (addr, strand)
}

fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(300)))
        .set_number_of_retries(1)
}

#[tokio::test]
async fn a_connection_left_hanging_is_replaced_after_a_timeout() {
    let server = RedisServer::start().await;
    let (proxy, strand) = stranding_proxy(server.addr()).await;
    let target = RedisTarget::address(&format!("redis://{proxy}/")).expect("url");
    let mut con = RenewingConnection::connect(target, config(), "test")
        .await
        .expect("connects");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut con)
        .await
        .expect("SET through the proxy");

    strand.send_modify(|g| *g += 1);
    let silent: redis::RedisResult<String> = redis::cmd("GET").arg("k").query_async(&mut con).await;
    let error = silent.expect_err("the stranded connection does not answer");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(con.renewals(), 1);

    let value: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut con)
        .await
        .expect("the next command goes on a new connection");
    assert_eq!(value, "v");
}

/// What the test above guards against: the client's own manager keeps the hanging connection.
#[tokio::test]
async fn the_plain_connection_manager_keeps_a_connection_left_hanging() {
    let server = RedisServer::start().await;
    let (proxy, strand) = stranding_proxy(server.addr()).await;
    let client = redis::Client::open(format!("redis://{proxy}/")).expect("url");
    let mut con = ConnectionManager::new_with_config(client, config())
        .await
        .expect("connects");
    let _: () = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .expect("PING");
    strand.send_modify(|g| *g += 1);
    for _ in 0..2 {
        let silent: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
        let error = silent.expect_err("still the stranded connection");
        assert!(error.is_timeout(), "{error}");
    }
}

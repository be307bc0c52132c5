//! Graceful shutdown of an in-process broker: listeners are closed when `Server::run` returns.
//!
//! Kept apart from the tests that spawn processes: a fork in a concurrent test briefly holds
//! copies of this process's sockets (until its exec closes them), which would keep a closed
//! listener reachable and make these checks fail for reasons that are not the broker's.

mod common;

use common::{v4, TestBroker};
use tokio::net::TcpStream;

#[tokio::test]
async fn stopped_broker_refuses_new_tcp_connections() {
    let broker = TestBroker::start().await;
    let tcp = broker.tcp();
    let mut client = v4::connect(v4::options(tcp, "before-stop"));
    client.connack().await;
    broker.stop().await;
    client.closed().await;
    let err = TcpStream::connect(tcp)
        .await
        .expect_err("connection after stop must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn listeners_are_closed_when_stop_returns_even_right_after_start() {
    // Stopping at once races the listener tasks' start; repeat to make a lost race visible.
    // The broker listens on an address no other test uses, so a port the OS hands to another
    // test's listener right after this one closed cannot make the check pass or fail.
    for _ in 0..20 {
        let broker = TestBroker::start_with(|c| {
            c.listeners.tcp = Some("127.1.0.1:0".parse().expect("addr"));
        })
        .await;
        let tcp = broker.tcp();
        broker.stop().await;
        let err = TcpStream::connect(tcp)
            .await
            .expect_err("connection after stop must be refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
}

//! Shared harness for the broker's integration tests: an in-process broker on OS-assigned
//! loopback ports, rumqttc v4/v5 clients whose events arrive on a channel, and a raw socket
//! client for byte-level tests.

#![allow(dead_code, unused_imports)]

pub mod reload;

use bytes::BytesMut;
use starling_broker::broker::Broker;
use starling_broker::server::{BoundAddresses, Server};
use starling_config::BrokerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be confident something does NOT happen.
pub const QUIET: Duration = Duration::from_millis(500);

/// A broker served in this process.
pub struct TestBroker {
    pub addresses: BoundAddresses,
    pub broker: Arc<Broker>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Serves `broker`'s MQTT over plain TCP on a free loopback port (a broker core built by the
/// test itself, e.g. on a store of its choosing); returns the address.
pub async fn serve_tcp(broker: Arc<Broker>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(starling_broker::connection::serve(
                broker.clone(),
                stream,
                peer,
            ));
        }
    });
    addr
}

/// The test configuration: every listener on 127.0.0.1 port 0, `$SYS` off.
pub fn test_config() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.listeners.tcp = Some("127.0.0.1:0".parse().expect("addr"));
    config.admin.bind = Some("127.0.0.1:0".parse().expect("addr"));
    config.sys.interval_secs = 0;
    config.shutdown.drain_timeout_secs = 5;
    config
}

impl TestBroker {
    /// Starts a broker with the test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker with the test configuration as adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut BrokerConfig)) -> Self {
        let mut config = test_config();
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let server = Server::bind(config).await.expect("broker binds");
        let addresses = server.addresses().clone();
        let broker = server.broker();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestBroker {
            addresses,
            broker,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The plain TCP address.
    pub fn tcp(&self) -> SocketAddr {
        self.addresses.tcp.expect("tcp listener")
    }

    /// Triggers a graceful shutdown and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("broker drains in time")
                .expect("broker task");
        }
    }
}

/// rumqttc MQTT 3.1.1 client whose event loop runs in a task; events arrive on a channel.
pub mod v4 {
    use super::*;
    pub use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Packet, Publish, QoS};

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Connects with `options`; the event loop stops at the first error (which is reported).
    pub fn connect(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        Client {
            client,
            events,
            task,
        }
    }

    impl Client {
        /// Waits for the next incoming packet matching `pick`, skipping others.
        pub async fn expect<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
            tokio::time::timeout(WAIT, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(p))) => {
                            if let Some(t) = pick(&p) {
                                return t;
                            }
                        }
                        Some(Ok(Event::Outgoing(_))) => {}
                        Some(Err(e)) => panic!("connection failed: {e}"),
                        None => panic!("event loop ended"),
                    }
                }
            })
            .await
            .expect("expected packet did not arrive in time")
        }

        /// Waits for the CONNACK and returns it.
        pub async fn connack(&mut self) -> rumqttc::ConnAck {
            self.expect(|p| match p {
                Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await
        }

        /// Waits for the next PUBLISH.
        pub async fn publish(&mut self) -> Publish {
            self.expect(|p| match p {
                Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
        }

        /// Waits for the SUBACK.
        pub async fn suback(&mut self) -> rumqttc::SubAck {
            self.expect(|p| match p {
                Packet::SubAck(s) => Some(s.clone()),
                _ => None,
            })
            .await
        }

        /// Asserts that no PUBLISH arrives within [`QUIET`].
        pub async fn no_publish(&mut self) {
            let got = tokio::time::timeout(QUIET, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return None,
                    }
                }
            })
            .await;
            if let Ok(Some(p)) = got {
                panic!("unexpected publish on {}: {:?}", p.topic, p.payload);
            }
        }

        /// Waits until the connection fails and returns the error text.
        pub async fn closed(&mut self) -> String {
            tokio::time::timeout(WAIT, async {
                loop {
                    match self.events.recv().await {
                        Some(Err(e)) => return e,
                        Some(Ok(_)) => {}
                        None => return "event loop ended".to_string(),
                    }
                }
            })
            .await
            .expect("connection did not close in time")
        }
    }
}

/// rumqttc MQTT 5 client whose event loop runs in a task; events arrive on a channel.
pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: JoinHandle<()>,
        last_error: Option<String>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub fn connect(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        Client {
            client,
            events,
            task,
            last_error: None,
        }
    }

    impl Client {
        pub async fn expect<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
            tokio::time::timeout(WAIT, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(p))) => {
                            if let Some(t) = pick(&p) {
                                return t;
                            }
                        }
                        Some(Ok(Event::Outgoing(_))) => {}
                        Some(Err(e)) => panic!("connection failed: {e}"),
                        None => panic!("event loop ended"),
                    }
                }
            })
            .await
            .expect("expected packet did not arrive in time")
        }

        pub async fn connack(&mut self) -> rumqttc::v5::mqttbytes::v5::ConnAck {
            self.expect(|p| match p {
                Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await
        }

        pub async fn publish(&mut self) -> Publish {
            self.expect(|p| match p {
                Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
        }

        pub async fn suback(&mut self) -> rumqttc::v5::mqttbytes::v5::SubAck {
            self.expect(|p| match p {
                Packet::SubAck(s) => Some(s.clone()),
                _ => None,
            })
            .await
        }

        pub async fn no_publish(&mut self) {
            let got = tokio::time::timeout(QUIET, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return None,
                    }
                }
            })
            .await;
            if let Ok(Some(p)) = got {
                panic!("unexpected publish on {:?}: {:?}", p.topic, p.payload);
            }
        }

        /// Waits for the connection's first outcome: `Ok(())` on CONNACK, else the client's
        /// error (a refusal names its reason code).
        pub async fn connack_outcome(&mut self) -> Result<(), String> {
            match self.first_of(|p| matches!(p, Packet::ConnAck(_))).await {
                Some(_) => Ok(()),
                None => Err(self.last_error.take().unwrap_or_default()),
            }
        }

        /// Waits until the connection ends; returns what ended it: the DISCONNECT's reason code
        /// (rumqttc reports a DISCONNECT from the broker as an error naming it), or the error.
        pub async fn ended(&mut self) -> String {
            match self.first_of(|p| matches!(p, Packet::Disconnect(_))).await {
                Some(Packet::Disconnect(d)) => format!("{:?}", d.reason_code),
                _ => self.last_error.take().unwrap_or_default(),
            }
        }

        /// The first incoming packet `pick` accepts, or `None` (the error kept in
        /// `last_error`) once the connection fails.
        async fn first_of(&mut self, pick: impl Fn(&Packet) -> bool) -> Option<Packet> {
            tokio::time::timeout(WAIT, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(p))) if pick(&p) => return Some(p),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            self.last_error = Some(e);
                            return None;
                        }
                        None => {
                            self.last_error = Some("event loop ended".to_string());
                            return None;
                        }
                    }
                }
            })
            .await
            .expect("an outcome in time")
        }

        /// Waits until the connection ends; returns the DISCONNECT the broker sent, if any.
        pub async fn disconnected(&mut self) -> Option<rumqttc::v5::mqttbytes::v5::Disconnect> {
            tokio::time::timeout(WAIT, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(Packet::Disconnect(d)))) => return Some(d),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return None,
                    }
                }
            })
            .await
            .expect("connection did not end in time")
        }
    }
}

/// A client that speaks raw bytes, for malformed and hostile input.
pub struct RawClient {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Encodes and sends a v5 packet.
    pub async fn send_v5(&mut self, packet: rumqttc::v5::mqttbytes::v5::Packet) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, None).expect("encode");
        self.send(&buf).await;
    }

    /// Encodes and sends a 3.1.1 packet.
    pub async fn send_v4(&mut self, packet: rumqttc::mqttbytes::v4::Packet) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, usize::MAX).expect("encode");
        self.send(&buf).await;
    }

    /// Reads the next v5 packet, or `None` when the broker closed the connection.
    pub async fn recv_v5(&mut self) -> Option<rumqttc::v5::mqttbytes::v5::Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if !self.buf.is_empty() {
                    match rumqttc::v5::mqttbytes::v5::Packet::read(&mut self.buf, None) {
                        Ok(p) => return Some(p),
                        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("broker sent an undecodable packet: {e}"),
                    }
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("broker neither answered nor closed in time")
    }

    /// Reads the next 3.1.1 packet, or `None` when the broker closed the connection.
    pub async fn recv_v4(&mut self) -> Option<rumqttc::mqttbytes::v4::Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if !self.buf.is_empty() {
                    match rumqttc::mqttbytes::v4::Packet::read(&mut self.buf, usize::MAX) {
                        Ok(p) => return Some(p),
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("broker sent an undecodable packet: {e}"),
                    }
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("broker neither answered nor closed in time")
    }

    /// Waits until the broker closes the connection, skipping anything it sends first.
    pub async fn expect_closed(&mut self) {
        tokio::time::timeout(WAIT, async {
            let mut scratch = [0u8; 1024];
            loop {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("broker did not close the connection");
    }
}

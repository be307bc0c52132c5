//! A fleet of device-like MQTT clients: each keeps a persistent session connected through one
//! address (a balancer, a Service), half MQTT 5 and half 3.1.1, and reconnects after a short
//! jittered pause whenever its connection ends (asked to move, refused, dropped). What they saw
//! is summed in a [`Tally`]; dropping the [`Fleet`] disconnects every client.

use rumqttc::v5;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// What the clients saw, summed.
#[derive(Default)]
pub struct Tally {
    /// CONNACKs received.
    pub connacks: AtomicUsize,
    /// Reconnects that found no session (a session lost).
    pub sessions_lost: AtomicUsize,
    /// Connections that ended (asked to go, or refused at CONNECT).
    pub drops: AtomicUsize,
    /// Clients connected at least once.
    pub connected_once: AtomicUsize,
}

impl Tally {
    /// Reconnects that found no session.
    pub fn sessions_lost(&self) -> usize {
        self.sessions_lost.load(Ordering::Relaxed)
    }

    /// Clients connected at least once.
    pub fn connected_once(&self) -> usize {
        self.connected_once.load(Ordering::Relaxed)
    }

    fn on_connack(&self, connected_once: &mut bool, session_present: bool) {
        self.connacks.fetch_add(1, Ordering::Relaxed);
        if *connected_once && !session_present {
            self.sessions_lost.fetch_add(1, Ordering::Relaxed);
        }
        if !*connected_once {
            self.connected_once.fetch_add(1, Ordering::Relaxed);
        }
        *connected_once = true;
    }
}

/// Clients connecting through one address; they stop when this is dropped.
pub struct Fleet {
    /// What they saw.
    pub tally: Arc<Tally>,
    tasks: Vec<JoinHandle<()>>,
    to: SocketAddr,
    prefix: String,
    credentials: Option<(String, String)>,
}

impl Fleet {
    /// No clients yet; those [`Self::add`] makes connect to `to` with ids `<prefix>-<i>`.
    pub fn new(to: SocketAddr, prefix: &str) -> Self {
        Fleet {
            tally: Arc::new(Tally::default()),
            tasks: Vec::new(),
            to,
            prefix: prefix.to_string(),
            credentials: None,
        }
    }

    /// The clients log in with this user name and password.
    pub fn with_credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_string(), password.to_string()));
        self
    }

    /// How many clients were started.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether none was started.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts one more client (even ones MQTT 5, odd ones 3.1.1).
    pub fn add(&mut self) {
        let index = self.tasks.len();
        let id = format!("{}-{index}", self.prefix);
        let host = self.to.ip().to_string();
        let port = self.to.port();
        let tally = self.tally.clone();
        let pause = Duration::from_millis(100 + (index as u64 * 37) % 400);
        let credentials = self.credentials.clone();
        let task = if index.is_multiple_of(2) {
            let mut options = v5::MqttOptions::new(id, host, port);
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(600));
            options.set_keep_alive(Duration::from_secs(60));
            if let Some((user, password)) = credentials {
                options.set_credentials(user, password);
            }
            let (client, mut eventloop) = v5::AsyncClient::new(options, 10);
            tokio::spawn(async move {
                let _client = client;
                let mut connected_once = false;
                loop {
                    match eventloop.poll().await {
                        Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(ack))) => {
                            tally.on_connack(&mut connected_once, ack.session_present)
                        }
                        Ok(_) => {}
                        Err(_) => {
                            tally.drops.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            })
        } else {
            let mut options = rumqttc::MqttOptions::new(id, host, port);
            options.set_clean_session(false);
            options.set_keep_alive(Duration::from_secs(60));
            if let Some((user, password)) = credentials {
                options.set_credentials(user, password);
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
            tokio::spawn(async move {
                let _client = client;
                let mut connected_once = false;
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                            tally.on_connack(&mut connected_once, ack.session_present)
                        }
                        Ok(_) => {}
                        Err(_) => {
                            tally.drops.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            })
        };
        self.tasks.push(task);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

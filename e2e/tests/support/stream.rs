//! Client side of the fault matrix: persistent QoS 1 subscribers that reconnect by themselves, a
//! paced publisher of numbered QoS 1 messages that knows which numbers were acknowledged, and the
//! tally of what every subscriber received (lost, copies with DUP, copies without DUP).

use rumqttc::v5;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pace of reconnection attempts (a retry pace, not synchronisation).
const RETRY: Duration = Duration::from_millis(100);
/// How long a connection attempt may take before it is given up and tried again.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Numbers the publisher has handed over but not seen acknowledged, at most. Below the client's
/// packet-id cycle (100), so a packet id is never reused while its number is unacknowledged
/// (the PUBACK of a packet id then names exactly one number).
const WINDOW: usize = 48;
/// Packet ids (and the in-flight limit) of the publisher's client.
const INFLIGHT: u16 = 100;

/// The MQTT protocol version of every client in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        })
    }
}

/// What a connection reports, in either version.
#[derive(Debug)]
enum Wire {
    ConnAck {
        present: bool,
    },
    SubAck {
        ok: bool,
    },
    Publish {
        number: Option<u64>,
        dup: bool,
    },
    PubAck {
        pkid: u16,
        accepted: bool,
        no_match: bool,
    },
    Sent {
        pkid: u16,
    },
    AwaitAck,
    Other,
}

/// The client half of a connection, to hand requests to its event loop.
#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Client::V4(_) => "Client(3.1.1)",
            Client::V5(_) => "Client(5)",
        })
    }
}

impl Client {
    fn try_publish(&self, topic: &str, payload: String) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(topic, v5::mqttbytes::QoS::AtLeastOnce, false, payload)
                .map_err(|e| e.to_string()),
        }
    }

    fn try_subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }
}

/// One MQTT client: its event loop reconnects (to the same address) when polled after an error.
enum Conn {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

fn number(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

fn from_v4(event: rumqttc::Event) -> Wire {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => Wire::ConnAck {
            present: ack.session_present,
        },
        Event::Incoming(Packet::SubAck(ack)) => Wire::SubAck {
            ok: ack
                .return_codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
        },
        Event::Incoming(Packet::Publish(p)) => Wire::Publish {
            number: number(&p.payload),
            dup: p.dup,
        },
        Event::Incoming(Packet::PubAck(ack)) => Wire::PubAck {
            pkid: ack.pkid,
            accepted: true,
            no_match: false,
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Wire::Sent { pkid },
        Event::Outgoing(Outgoing::AwaitAck(_)) => Wire::AwaitAck,
        _ => Wire::Other,
    }
}

fn from_v5(event: v5::Event) -> Wire {
    use rumqttc::Outgoing;
    use v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
    match event {
        v5::Event::Incoming(Packet::ConnAck(ack)) => Wire::ConnAck {
            present: ack.session_present,
        },
        v5::Event::Incoming(Packet::SubAck(ack)) => Wire::SubAck {
            ok: ack
                .return_codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
        },
        v5::Event::Incoming(Packet::Publish(p)) => Wire::Publish {
            number: number(&p.payload),
            dup: p.dup,
        },
        v5::Event::Incoming(Packet::PubAck(ack)) => Wire::PubAck {
            pkid: ack.pkid,
            accepted: matches!(
                ack.reason,
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
            ),
            no_match: ack.reason == PubAckReason::NoMatchingSubscribers,
        },
        v5::Event::Outgoing(Outgoing::Publish(pkid)) => Wire::Sent { pkid },
        v5::Event::Outgoing(Outgoing::AwaitAck(_)) => Wire::AwaitAck,
        _ => Wire::Other,
    }
}

impl Conn {
    /// A client for `id` at `addr`: persistent (clean start off, session expiry 300 s) or clean;
    /// with a user name and password when given.
    fn new(
        version: Version,
        addr: SocketAddr,
        id: &str,
        persistent: bool,
        credentials: Option<&(String, String)>,
    ) -> (Client, Conn) {
        let host = addr.ip().to_string();
        match version {
            Version::V311 => {
                let mut options = rumqttc::MqttOptions::new(id, host, addr.port());
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                options.set_keep_alive(Duration::from_secs(30));
                options.set_clean_session(!persistent);
                options.set_inflight(INFLIGHT);
                let (client, eventloop) = rumqttc::AsyncClient::new(options, 256);
                (Client::V4(client), Conn::V4(Box::new(eventloop)))
            }
            Version::V5 => {
                let mut options = v5::MqttOptions::new(id, host, addr.port());
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                options.set_keep_alive(Duration::from_secs(30));
                options.set_clean_start(!persistent);
                if persistent {
                    options.set_session_expiry_interval(Some(300));
                }
                options.set_outgoing_inflight_upper_limit(INFLIGHT);
                let (client, eventloop) = v5::AsyncClient::new(options, 256);
                (Client::V5(client), Conn::V5(Box::new(eventloop)))
            }
        }
    }

    async fn poll(&mut self) -> Result<Wire, String> {
        match self {
            Conn::V4(eventloop) => eventloop
                .poll()
                .await
                .map(from_v4)
                .map_err(|e| e.to_string()),
            Conn::V5(eventloop) => eventloop
                .poll()
                .await
                .map(from_v5)
                .map_err(|e| e.to_string()),
        }
    }

    /// What the event loop read before its connection broke and has not yielded yet: the
    /// client acknowledged none of it (the acknowledgements were never flushed), but a test
    /// that drops the event loop must still count it as received.
    fn drain(&mut self) -> Vec<Wire> {
        match self {
            Conn::V4(eventloop) => eventloop.state.events.drain(..).map(from_v4).collect(),
            Conn::V5(eventloop) => eventloop.state.events.drain(..).map(from_v5).collect(),
        }
    }
}

/// The copies of one number a subscriber received.
#[derive(Debug, Default, Clone)]
pub struct Copies {
    /// Copies without DUP.
    pub plain: usize,
    /// Copies with DUP.
    pub dup: usize,
    /// Copies after the first that came without DUP.
    pub dupless: usize,
    /// Where the first few copies came from: the connection (counted from 1 per subscriber),
    /// whether it carried DUP, and when it arrived.
    pub seen: Vec<(u64, bool, Instant)>,
}

/// For how many numbers that came twice without DUP a tally shows where each copy came from.
const PROVENANCE_SHOWN: usize = 6;
/// How many copies of one number keep their provenance.
const SEEN_KEPT: usize = 4;

/// What one subscriber saw.
#[derive(Debug)]
pub struct SubState {
    pub id: String,
    /// The connection that is this subscriber's now (older ones may still deliver until they
    /// are closed).
    current: u64,
    /// Older connections not closed yet.
    retired: BTreeSet<u64>,
    pub connected: bool,
    down_since: Option<Instant>,
    /// The longest time from a broken connection to the next CONNACK.
    pub longest_outage: Duration,
    pub connacks: usize,
    /// CONNACKs with session present = 0 after the first: the session was lost.
    pub sessions_lost: usize,
    pub subscribed: bool,
    pub suback_failures: usize,
    pub copies: BTreeMap<u64, Copies>,
    /// When each new number first arrived, in order of arrival.
    pub arrivals: Vec<Instant>,
    /// Payloads that were not a number.
    pub garbage: usize,
    pub last_error: Option<String>,
}

impl SubState {
    fn new(id: String) -> Self {
        SubState {
            id,
            current: 0,
            retired: BTreeSet::new(),
            connected: false,
            down_since: None,
            longest_outage: Duration::ZERO,
            connacks: 0,
            sessions_lost: 0,
            subscribed: false,
            suback_failures: 0,
            copies: BTreeMap::new(),
            arrivals: Vec::new(),
            garbage: 0,
            last_error: None,
        }
    }

    /// Records what connection `conn` reported; true when the subscription must be made again
    /// (a CONNACK without a session).
    fn on_wire(&mut self, conn: u64, wire: Wire, now: Instant) -> bool {
        match wire {
            Wire::Publish { number: None, .. } => self.garbage += 1,
            Wire::Publish {
                number: Some(n),
                dup,
            } => {
                let copies = self.copies.entry(n).or_default();
                if copies.plain + copies.dup == 0 {
                    self.arrivals.push(now);
                } else if !dup {
                    copies.dupless += 1;
                }
                if dup {
                    copies.dup += 1;
                } else {
                    copies.plain += 1;
                }
                if copies.seen.len() < SEEN_KEPT {
                    copies.seen.push((conn, dup, now));
                }
            }
            Wire::ConnAck { present } if conn == self.current => {
                if let Some(since) = self.down_since.take() {
                    self.longest_outage = self.longest_outage.max(now - since);
                }
                self.connected = true;
                self.connacks += 1;
                if !present {
                    if self.connacks > 1 {
                        self.sessions_lost += 1;
                    }
                    self.subscribed = false;
                    return true;
                }
            }
            Wire::SubAck { ok } if conn == self.current => {
                self.subscribed = ok;
                if !ok {
                    self.suback_failures += 1;
                }
            }
            _ => {}
        }
        false
    }

    fn on_error(&mut self, conn: u64, error: String, now: Instant) {
        if conn == self.current {
            self.connected = false;
            self.down_since.get_or_insert(now);
        }
        self.last_error = Some(error);
    }

    /// The longest time between two new numbers.
    pub fn longest_gap(&self) -> Duration {
        self.arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// What the publisher did.
#[derive(Debug, Default)]
pub struct PubState {
    /// Numbers `0..next` were handed to a connection.
    pub next: u64,
    /// Numbers acknowledged with a PUBACK that accepted them.
    pub acked: BTreeSet<u64>,
    /// PUBACKs that refused the message (v5 reason code 0x80 or above).
    pub refused: usize,
    /// PUBACKs with v5 reason code 0x10 (no matching subscribers).
    pub no_match: usize,
    /// Numbers handed over whose connection broke before their PUBACK.
    pub abandoned: u64,
    /// Packet-id collisions or acknowledgements the publisher could not attribute (the harness
    /// cannot tell which numbers were acknowledged: the run is void).
    pub anomalies: usize,
    client: Option<Client>,
    submitted: VecDeque<u64>,
    inflight: HashMap<u16, u64>,
    pub connected: bool,
    down_since: Option<Instant>,
    pub longest_outage: Duration,
    pub connacks: usize,
    pub last_error: Option<String>,
}

impl PubState {
    fn outstanding(&self) -> usize {
        self.submitted.len() + self.inflight.len()
    }

    fn on_wire(&mut self, wire: Wire) {
        match wire {
            Wire::Sent { pkid } => match self.submitted.pop_front() {
                Some(n) => {
                    if self.inflight.insert(pkid, n).is_some() {
                        self.anomalies += 1;
                    }
                }
                None => self.anomalies += 1,
            },
            Wire::PubAck {
                pkid,
                accepted,
                no_match,
            } => match self.inflight.remove(&pkid) {
                Some(n) if accepted => {
                    self.acked.insert(n);
                    self.no_match += usize::from(no_match);
                }
                Some(_) => self.refused += 1,
                None => self.anomalies += 1,
            },
            Wire::AwaitAck => self.anomalies += 1,
            _ => {}
        }
    }

    /// The connection broke: what it had not had acknowledged is given up (its client is clean,
    /// so the next connection starts without it).
    fn on_error(&mut self, error: String, now: Instant) {
        self.abandoned += self.outstanding() as u64;
        self.submitted.clear();
        self.inflight.clear();
        self.client = None;
        if self.connected {
            self.connected = false;
            self.down_since = Some(now);
        }
        self.last_error = Some(error);
    }
}

/// Everything the clients of a run saw.
#[derive(Debug)]
pub struct Board {
    pub subs: Vec<SubState>,
    pub publisher: PubState,
}

/// The board shared by the client tasks, with a signal for every change.
struct Shared {
    board: Mutex<Board>,
    changed: watch::Sender<u64>,
    /// User name and password every connection logs in with (anonymous when `None`).
    credentials: Option<(String, String)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update<T>(&self, change: impl FnOnce(&mut Board) -> T) -> T {
        let out = change(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
        out
    }
}

/// A run's clients: subscribers `sub-0`, `sub-1`, ... on filter `<topic>/#` and one publisher on
/// `<topic>/n`.
pub struct Stream {
    pub version: Version,
    pub topic: String,
    /// Prefix of the client ids.
    prefix: String,
    /// Messages per second.
    pub rate: u32,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    publishing: Option<(watch::Sender<bool>, JoinHandle<()>, JoinHandle<()>)>,
    next_conn: u64,
    /// When the publisher started.
    pub started: Option<Instant>,
}

/// How a subscriber or the publisher ended a run.
#[derive(Debug, Clone)]
pub struct SubTally {
    pub id: String,
    pub received: usize,
    /// Acknowledged numbers this subscriber never received.
    pub lost: Vec<u64>,
    pub lost_count: usize,
    pub dup_copies: usize,
    /// Numbers that came with DUP.
    pub dup_numbers: Vec<u64>,
    pub dupless: usize,
    /// Numbers that came again without DUP.
    pub dupless_numbers: Vec<u64>,
    /// For the first few of those: each copy's connection, DUP flag and arrival (seconds after
    /// the publisher started), e.g. `812: c1 +4.210s, c2 DUP +9.880s`.
    pub dupless_provenance: Vec<String>,
    pub longest_gap: Duration,
    pub longest_outage: Duration,
    pub connacks: usize,
    pub sessions_lost: usize,
    pub suback_failures: usize,
    pub garbage: usize,
    pub last_error: Option<String>,
}

/// The outcome of a run's stream.
#[derive(Debug, Clone)]
pub struct Tally {
    pub published: u64,
    pub acked: usize,
    pub refused: usize,
    pub no_match: usize,
    pub abandoned: u64,
    pub anomalies: usize,
    pub pub_outage: Duration,
    pub pub_connacks: usize,
    pub pub_last_error: Option<String>,
    pub subs: Vec<SubTally>,
    /// Whether every subscriber had every acknowledged number when the run ended.
    pub complete: bool,
}

impl Tally {
    pub fn lost(&self) -> usize {
        self.subs.iter().map(|s| s.lost_count).sum()
    }

    pub fn dupless(&self) -> usize {
        self.subs.iter().map(|s| s.dupless).sum()
    }

    /// The longest time any subscriber went without a new number.
    pub fn recovery(&self) -> Duration {
        self.subs
            .iter()
            .map(|s| s.longest_gap)
            .max()
            .unwrap_or_default()
    }
}

impl Stream {
    /// Clients for `subscribers` subscribers; client ids and the topic start with `prefix`.
    pub fn new(version: Version, prefix: &str, subscribers: usize, rate: u32) -> Self {
        let subs = (0..subscribers)
            .map(|k| SubState::new(format!("{prefix}-sub-{k}")))
            .collect();
        let (changed, _) = watch::channel(0);
        Stream {
            version,
            topic: format!("fm/{prefix}"),
            prefix: prefix.to_string(),
            rate,
            shared: Arc::new(Shared {
                board: Mutex::new(Board {
                    subs,
                    publisher: PubState::default(),
                }),
                changed,
                credentials: None,
            }),
            tasks: Vec::new(),
            publishing: None,
            next_conn: 1,
            started: None,
        }
    }

    /// This stream with every connection logging in as `user`; call before connecting.
    // Used by the real-pods test only; the fault matrix's brokers admit anonymous clients.
    #[allow(dead_code)]
    pub fn with_credentials(mut self, user: &str, password: &str) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("with_credentials is called before any connection")
            .credentials = Some((user.to_string(), password.to_string()));
        self
    }

    /// Reads the board.
    pub fn board(&self) -> MutexGuard<'_, Board> {
        self.shared.lock()
    }

    /// Waits until `done` holds for the board, at most `within`; false on timeout.
    pub async fn wait(&self, within: Duration, mut done: impl FnMut(&Board) -> bool) -> bool {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(&self.board()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return done(&self.board()),
            }
        }
    }

    /// Opens a new connection for subscriber `k` at `addr` (it becomes the subscriber's
    /// current connection; an older one is left to be taken over) and waits until it is
    /// connected and subscribed.
    pub async fn connect_subscriber(&mut self, k: usize, addr: SocketAddr) -> Result<(), String> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let id = self.shared.update(|b| {
            let sub = &mut b.subs[k];
            if sub.current != 0 {
                sub.retired.insert(sub.current);
                sub.down_since.get_or_insert(Instant::now());
            }
            sub.current = conn;
            sub.connected = false;
            sub.id.clone()
        });
        let task = tokio::spawn(subscriber_connection(
            self.shared.clone(),
            self.version,
            k,
            conn,
            id,
            addr,
            format!("{}/#", self.topic),
        ));
        self.tasks.push(task);
        let ok = self
            .wait(CONNECT_WITHIN * 3, |b| {
                let sub = &b.subs[k];
                sub.current == conn && sub.connected && sub.subscribed
            })
            .await;
        if ok {
            Ok(())
        } else {
            let b = self.board();
            Err(format!(
                "{}: not connected and subscribed within {:?} (last error: {:?})",
                b.subs[k].id,
                CONNECT_WITHIN * 3,
                b.subs[k].last_error
            ))
        }
    }

    /// Waits until subscriber `k`'s older connections are closed (taken over); false on timeout.
    pub async fn wait_retired_closed(&self, k: usize, within: Duration) -> bool {
        self.wait(within, |b| b.subs[k].retired.is_empty()).await
    }

    /// Starts the publisher at `addr` and waits until it is connected.
    pub async fn start_publisher(&mut self, addr: SocketAddr) -> Result<(), String> {
        let (stop, stopped) = watch::channel(false);
        let conn = tokio::spawn(publisher_connection(
            self.shared.clone(),
            self.version,
            format!("{}-pub", self.prefix),
            addr,
        ));
        let submit = tokio::spawn(submitter(
            self.shared.clone(),
            format!("{}/n", self.topic),
            self.rate,
            stopped,
        ));
        self.publishing = Some((stop, submit, conn));
        self.started = Some(Instant::now());
        if self
            .wait(CONNECT_WITHIN * 3, |b| b.publisher.connected)
            .await
        {
            Ok(())
        } else {
            Err(format!(
                "publisher not connected: {:?}",
                self.board().publisher.last_error
            ))
        }
    }

    /// Waits until every subscriber has received at least `n` numbers; false on timeout.
    pub async fn wait_received(&self, n: usize, within: Duration) -> bool {
        self.wait(within, |b| b.subs.iter().all(|s| s.copies.len() >= n))
            .await
    }

    /// Waits until every subscriber and the publisher are connected and every subscriber has
    /// received `more` numbers beyond what it had; false on timeout.
    pub async fn wait_flowing(&self, more: usize, within: Duration) -> bool {
        let had: Vec<usize> = self.board().subs.iter().map(|s| s.copies.len()).collect();
        self.wait(within, |b| {
            b.publisher.connected
                && b.subs
                    .iter()
                    .zip(&had)
                    .all(|(s, &h)| s.connected && s.copies.len() >= h + more)
        })
        .await
    }

    /// Stops publishing, waits for the PUBACKs still due (`acks_within`) and until every
    /// subscriber has every acknowledged number (`deliver_within`), gathers late copies for
    /// `quiet`, then closes every client and counts.
    pub async fn finish(
        mut self,
        acks_within: Duration,
        deliver_within: Duration,
        quiet: Duration,
    ) -> Tally {
        if let Some((stop, submit, conn)) = self.publishing.take() {
            stop.send_replace(true);
            let _ = submit.await;
            self.wait(acks_within, |b| b.publisher.outstanding() == 0)
                .await;
            conn.abort();
            let _ = conn.await;
            self.shared.update(|b| {
                let p = &mut b.publisher;
                p.abandoned += p.outstanding() as u64;
                p.submitted.clear();
                p.inflight.clear();
            });
        }
        let complete = self
            .wait(deliver_within, |b| {
                b.subs
                    .iter()
                    .all(|s| b.publisher.acked.iter().all(|n| s.copies.contains_key(n)))
            })
            .await;
        // A bounded look for copies that come late (a duplicate without DUP after the last new
        // number): nothing else signals that none will come.
        tokio::time::sleep(quiet).await;
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        let b = self.board();
        let p = &b.publisher;
        let subs = b
            .subs
            .iter()
            .map(|s| {
                let lost: Vec<u64> = p
                    .acked
                    .iter()
                    .filter(|n| !s.copies.contains_key(n))
                    .copied()
                    .collect();
                let dupless_numbers: Vec<u64> = s
                    .copies
                    .iter()
                    .filter(|(_, c)| c.dupless > 0)
                    .map(|(n, _)| *n)
                    .collect();
                let start = self.started.unwrap_or_else(Instant::now);
                let dupless_provenance = s
                    .copies
                    .iter()
                    .filter(|(_, c)| c.dupless > 0)
                    .take(PROVENANCE_SHOWN)
                    .map(|(n, c)| {
                        let copies: Vec<String> = c
                            .seen
                            .iter()
                            .map(|(conn, dup, at)| {
                                format!(
                                    "c{conn}{} +{:.3}s",
                                    if *dup { " DUP" } else { "" },
                                    at.saturating_duration_since(start).as_secs_f64()
                                )
                            })
                            .collect();
                        format!("{n}: {}", copies.join(", "))
                    })
                    .collect();
                SubTally {
                    id: s.id.clone(),
                    dupless_provenance,
                    received: s.copies.len(),
                    lost_count: lost.len(),
                    lost,
                    dup_copies: s.copies.values().map(|c| c.dup).sum(),
                    dup_numbers: s
                        .copies
                        .iter()
                        .filter(|(_, c)| c.dup > 0)
                        .map(|(n, _)| *n)
                        .collect(),
                    dupless: s.copies.values().map(|c| c.dupless).sum(),
                    dupless_numbers,
                    longest_gap: s.longest_gap(),
                    longest_outage: s.longest_outage,
                    connacks: s.connacks,
                    sessions_lost: s.sessions_lost,
                    suback_failures: s.suback_failures,
                    garbage: s.garbage,
                    last_error: s.last_error.clone(),
                }
            })
            .collect();
        Tally {
            published: p.next,
            acked: p.acked.len(),
            refused: p.refused,
            no_match: p.no_match,
            abandoned: p.abandoned,
            anomalies: p.anomalies,
            pub_outage: p.longest_outage,
            pub_connacks: p.connacks,
            pub_last_error: p.last_error.clone(),
            subs,
            complete,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some((_, submit, conn)) = &self.publishing {
            submit.abort();
            conn.abort();
        }
    }
}

/// One connection of subscriber `k`: records what it receives; while it is the subscriber's
/// current connection it reconnects after errors (rumqttc does, when polled again), otherwise
/// the first error ends it.
async fn subscriber_connection(
    shared: Arc<Shared>,
    version: Version,
    k: usize,
    conn: u64,
    id: String,
    addr: SocketAddr,
    filter: String,
) {
    let (client, mut eventloop) = Conn::new(version, addr, &id, true, shared.credentials.as_ref());
    loop {
        match eventloop.poll().await {
            Ok(wire) => {
                let subscribe = shared.update(|b| b.subs[k].on_wire(conn, wire, Instant::now()));
                if subscribe {
                    if let Err(e) = client.try_subscribe(&filter) {
                        shared.update(|b| b.subs[k].last_error = Some(e));
                    }
                }
            }
            Err(error) => {
                let read = eventloop.drain();
                let current = shared.update(|b| {
                    let now = Instant::now();
                    let sub = &mut b.subs[k];
                    for wire in read {
                        sub.on_wire(conn, wire, now);
                    }
                    sub.on_error(conn, error, now);
                    if sub.current != conn {
                        sub.retired.remove(&conn);
                    }
                    sub.current == conn
                });
                if !current {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The publisher's connections: one clean client after another (a broken one is dropped with
/// what it had not had acknowledged), always to `addr`.
async fn publisher_connection(shared: Arc<Shared>, version: Version, id: String, addr: SocketAddr) {
    loop {
        let (client, mut eventloop) =
            Conn::new(version, addr, &id, false, shared.credentials.as_ref());
        let connack = tokio::time::timeout(CONNECT_WITHIN, async {
            loop {
                match eventloop.poll().await {
                    Ok(Wire::ConnAck { .. }) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match connack {
            Ok(Ok(())) => shared.update(|b| {
                let p = &mut b.publisher;
                if let Some(since) = p.down_since.take() {
                    p.longest_outage = p.longest_outage.max(since.elapsed());
                }
                p.connected = true;
                p.connacks += 1;
                p.client = Some(client);
            }),
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => e,
                    _ => "no CONNACK in time".to_string(),
                };
                shared.update(|b| b.publisher.last_error = Some(error));
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        loop {
            match eventloop.poll().await {
                Ok(wire) => shared.update(|b| b.publisher.on_wire(wire)),
                Err(error) => {
                    let read = eventloop.drain();
                    shared.update(|b| {
                        for wire in read {
                            b.publisher.on_wire(wire);
                        }
                        b.publisher.on_error(error, Instant::now());
                    });
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Hands the next number to the publisher's connection `rate` times a second, while it is
/// connected and has fewer than [`WINDOW`] numbers unacknowledged (a tick without room
/// publishes nothing: numbers stay consecutive).
async fn submitter(shared: Arc<Shared>, topic: String, rate: u32, mut stop: watch::Receiver<bool>) {
    let mut pace = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = pace.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        shared.update(|b| {
            let p = &mut b.publisher;
            let Some(client) = &p.client else { return };
            if p.outstanding() >= WINDOW {
                return;
            }
            if client.try_publish(&topic, p.next.to_string()).is_ok() {
                p.submitted.push_back(p.next);
                p.next += 1;
            }
        });
    }
}

/// Sorted numbers as ranges, e.g. `3, 7..=9` (at most 8 ranges, then how many more).
pub fn ranges(numbers: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &n in numbers {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => runs.push((n, n)),
        }
    }
    let mut text: Vec<String> = runs
        .iter()
        .take(8)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..={b}")
            }
        })
        .collect();
    if runs.len() > 8 {
        text.push(format!("and {} more ranges", runs.len() - 8));
    }
    text.join(", ")
}

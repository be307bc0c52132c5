//! One client's connection task: reading and writing packets, keep-alive, flow control, and the
//! hand-over of its session to the store when it ends.
//!
//! [`serve`] runs the whole life of a connection: the CONNECT handshake ([`handshake`]), the
//! packet loop (this module), the handling of each packet ([`inbound`]), and the clean-up.

mod finish;
mod handshake;
mod inbound;
mod outbound_alias;
mod reading;

use crate::broker::Broker;
use crate::listener::peer_identity::PeerIdentity;
use crate::mailbox::{Mailbox, SessionCounts, Signal};
use crate::message::{ClientId, Message};
use crate::protocol::{self, DisconnectReasonCode, Packet};
use crate::protocol::{ProtocolVersion, PubRel, Publish, QoS};
use crate::router::SubscriptionOptions;
use crate::session::{Offer, Outgoing};
use crate::store::{InflightState, QueuedMessage};
use bytes::{Bytes, BytesMut};
use outbound_alias::{AliasUse, OutboundAliases};
use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedMutexGuard;

/// Bytes of output gathered before they are written even if more is ready.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Serves one client connection until it ends; the client logs in with its CONNECT credentials.
///
/// (The future is [`serve_as`]'s own, not one wrapping it: a connection's task is as large as
/// its future.)
pub fn serve<S>(broker: Arc<Broker>, stream: S, peer: SocketAddr) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    serve_as(broker, stream, peer, PeerIdentity::Credentials)
}

/// Serves one client connection until it ends; `identity` is what the transport established
/// about the client (the username of a verified TLS client certificate, say).
pub fn serve_as<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    identity: PeerIdentity,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The handshake and the clean-up run once and have large futures: boxing them keeps them out
    // of the task that an idle connection keeps for its whole life. The handshake takes the
    // stream and the identity here, so that the task's future has no room for them.
    let establishing = Box::pin(handshake::establish(broker.clone(), stream, peer, identity));
    async move {
        broker.metrics.connections_total.inc();
        let Some(mut connection) = establishing.await else {
            return;
        };
        let exit = connection.run().await;
        let finishing = Box::pin(connection.finish(exit));
        finishing.await;
    }
}

/// Why the packet loop ended.
#[derive(Debug)]
enum Exit {
    /// The client sent DISCONNECT; `will` says whether its will is still published (v5 0x04).
    Disconnected { will: bool },
    /// The socket closed or failed without DISCONNECT.
    Closed,
    /// Nothing arrived within 1.5 × keep-alive.
    KeepAliveTimeout,
    /// The client broke the protocol; v5 clients are told why.
    Violation(DisconnectReasonCode, String),
    /// Another connection took the session over.
    TakenOver,
    /// The broker is shutting down, or this node is being evacuated (`evacuated`: the client
    /// is asked to use another server).
    Shutdown { evacuated: bool },
    /// Asked to use another server to even out the cluster (see `cluster::rebalance`); the
    /// node stays.
    Moved,
    /// The cluster declared this node dead and adopted the session elsewhere.
    Adopted,
    /// An operator disconnected the client; with `discard_session` its session goes too.
    Kicked { discard_session: bool },
}

/// What the packet loop has to wait for next.
enum Work {
    /// Nothing: every complete packet has been handled.
    Done,
    /// An accepted PUBLISH to route and then acknowledge.
    Route {
        message: Arc<Message>,
        qos: QoS,
        packet_id: u16,
    },
    /// A SUBSCRIBE (which may need the store for retained messages).
    Subscribe(Box<crate::protocol::Subscribe>),
    /// An UNSUBSCRIBE (written through to a cluster store).
    Unsubscribe(Box<crate::protocol::Unsubscribe>),
}

/// A will waiting for its connection to end.
struct Will {
    message: Arc<Message>,
    delay: Duration,
}

/// A connected client: its socket, session state and limits.
struct Connection<S> {
    broker: Arc<Broker>,
    stream: S,
    peer: SocketAddr,
    version: ProtocolVersion,
    client_id: ClientId,
    username: Option<String>,
    connection_id: u64,
    read_buf: BytesMut,
    write_buf: BytesMut,
    max_packet_in: u32,
    max_packet_out: Option<u32>,
    topic_alias_max: u16,
    topic_aliases: BTreeMap<u16, Arc<str>>,
    /// The highest topic alias this connection assigns to the topics it sends (0: none, as
    /// for most clients), and the aliases assigned.
    outbound_alias_max: u16,
    outbound_aliases: OutboundAliases,
    expiry_secs: u32,
    /// The store's fencing token for this connection's claim of the session.
    generation: u64,
    connect_expiry_was_zero: bool,
    subscriptions: BTreeMap<String, SubscriptionOptions>,
    outgoing: Outgoing,
    incoming_qos2: BTreeSet<u16>,
    will: Option<Will>,
    mailbox: Arc<Mailbox>,
    arrived: VecDeque<QueuedMessage>,
    /// Where this client's last topic was routed, and what it published for other nodes since
    /// its input was last handled.
    publishing: crate::broker::Publishing,
    /// A QoS 1/2 publish was routed in a cluster and its acknowledgement is in the write buffer:
    /// the next flush first waits for Redis to have what it wrote.
    unconfirmed: bool,
    _session_guard: OwnedMutexGuard<()>,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The packet loop.
    async fn run(&mut self) -> Exit {
        if let Err(exit) = self.resume_session().await {
            return exit;
        }
        let mut mode = reading::ReadMode::Scratch;
        loop {
            if let Err(exit) = self.process_input().await {
                return exit;
            }
            if let Err(exit) = self.take_deliveries().await {
                return exit;
            }
            if let Err(exit) = self.flush().await {
                return exit;
            }
            if let Some(signal) = self.mailbox.signalled() {
                return signal_exit(signal);
            }
            self.mailbox.note_session(SessionCounts {
                inflight: self.outgoing.inflight_len(),
                queued: self.outgoing.pending_len(),
                subscriptions: self.subscriptions.len(),
            });
            // An idle connection holds no read buffer (see `reading`).
            let room = reading::prepare(&mut self.read_buf, mode);
            tokio::select! {
                biased;
                read = reading::read_some(&mut self.stream, &mut self.read_buf, mode) => match read {
                    Ok(0) | Err(_) => return Exit::Closed,
                    Ok(n) => {
                        mode = mode.after(n, room);
                        self.broker.metrics.bytes_received.inc_by(n as u64);
                        self.mailbox.heard(self.broker.clock_ms());
                    }
                },
                // Only woken here; messages and signals are looked at at the top of the loop. (With
                // no room, messages stay in the mailbox and do not wake it again until taken.)
                _ = self.mailbox.wait() => {}
            }
        }
    }

    /// Takes as many messages from the mailbox as the session has room for and sends what the
    /// in-flight window allows. Leaving the rest in the mailbox is what pushes back on publishers.
    async fn take_deliveries(&mut self) -> Result<(), Exit> {
        let room = self.outgoing.room();
        if room == 0 || self.mailbox.is_empty() {
            return Ok(());
        }
        let mut arrived = std::mem::take(&mut self.arrived);
        self.mailbox.take_up_to(&mut arrived, room);
        while let Some(queued) = arrived.pop_front() {
            self.offer(queued);
            if self.write_buf.len() >= WRITE_HIGH_WATER {
                if let Err(exit) = self.flush().await {
                    self.arrived = arrived;
                    return Err(exit);
                }
            }
        }
        if arrived.capacity() <= 1024 {
            self.arrived = arrived;
        }
        Ok(())
    }

    /// Decodes and handles every complete packet in the read buffer, then hands what it
    /// published for other nodes to the relay.
    async fn process_input(&mut self) -> Result<(), Exit> {
        let handled = self.handle_input().await;
        self.broker.send_relays(&mut self.publishing).await;
        handled
    }

    async fn handle_input(&mut self) -> Result<(), Exit> {
        loop {
            let work = self.next_work()?;
            match work {
                Work::Done => return Ok(()),
                Work::Route {
                    message,
                    qos,
                    packet_id,
                } => {
                    let routed = self
                        .broker
                        .publish_with(message, &mut self.publishing)
                        .await;
                    self.unconfirmed |= qos != QoS::AtMostOnce && self.broker.cluster().is_some();
                    self.acknowledge_publish(qos, packet_id, routed);
                }
                Work::Subscribe(subscribe) => {
                    // Rare and with a large future: boxed, in a statement of its own so the
                    // unboxed future is not kept in this task's state, which every connection has.
                    let subscribing = Box::pin(self.on_subscribe(*subscribe));
                    subscribing.await?
                }
                Work::Unsubscribe(unsubscribe) => {
                    let unsubscribing = Box::pin(self.on_unsubscribe(*unsubscribe));
                    unsubscribing.await
                }
            }
            if self.write_buf.len() >= WRITE_HIGH_WATER {
                self.flush().await?;
            }
        }
    }

    /// Decodes packets, handling those that need no waiting, until one that does (a PUBLISH to
    /// route, a SUBSCRIBE) or the end of the complete input. Kept synchronous so that the large
    /// decoded packets are never held across an await in the connection's task.
    fn next_work(&mut self) -> Result<Work, Exit> {
        loop {
            let packet =
                match protocol::decode(&mut self.read_buf, self.version, self.max_packet_in) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => return Ok(Work::Done),
                    Err(e) => return Err(Exit::Violation(e.reason_code(), e.to_string())),
                };
            match packet {
                Packet::Publish(publish) => {
                    let (qos, packet_id) = (publish.qos, publish.pkid);
                    if let Some(message) = self.accept_publish(publish)? {
                        return Ok(Work::Route {
                            message,
                            qos,
                            packet_id,
                        });
                    }
                }
                Packet::Subscribe(subscribe) => return Ok(Work::Subscribe(Box::new(subscribe))),
                Packet::Unsubscribe(unsubscribe) => {
                    return Ok(Work::Unsubscribe(Box::new(unsubscribe)))
                }
                other => self.handle(other)?,
            }
        }
    }

    /// Writes out everything buffered.
    async fn flush(&mut self) -> Result<(), Exit> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        if self.unconfirmed {
            self.confirm_publishes().await;
        }
        let len = self.write_buf.len();
        // A client that does not read must not keep a takeover or a shutdown waiting: the write
        // is raced against the mailbox's signals (only those: the wake-up for messages belongs to
        // the packet loop), with one write future so no byte is written twice.
        {
            let write = write_all_and_flush(&mut self.stream, &self.write_buf);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    written = &mut write => {
                        if written.is_err() {
                            return Err(Exit::Closed);
                        }
                        break;
                    }
                    _ = self.mailbox.wait_signal() => {
                        if let Some(signal) = self.mailbox.signalled() {
                            return Err(signal_exit(signal));
                        }
                    }
                }
            }
        }
        self.broker.metrics.bytes_sent.inc_by(len as u64);
        self.write_buf.clear();
        if self.write_buf.capacity() > 4 * WRITE_HIGH_WATER {
            self.write_buf = BytesMut::new();
        }
        Ok(())
    }

    /// Waits until Redis has everything the publishes acknowledged in the write buffer wrote
    /// (relayed messages, journalled copies), so no acknowledged QoS 1/2 message is lost if this
    /// node dies. While Redis is unreachable the node is degraded and acknowledges without it.
    async fn confirm_publishes(&mut self) {
        self.unconfirmed = false;
        // What they relay must be in the relay queue before the barrier.
        self.broker.send_relays(&mut self.publishing).await;
        let Some(link) = self.broker.cluster() else {
            return;
        };
        let confirmed = link.redis_up()
            && matches!(
                tokio::time::timeout(link.confirm_wait(), link.barrier()).await,
                Ok(Ok(()))
            );
        if !confirmed {
            self.broker.metrics.acks_unconfirmed.inc();
        }
    }

    /// Encodes a packet into the write buffer.
    fn send(&mut self, packet: &Packet) -> bool {
        let encoded = self.encode(packet);
        self.sent(encoded)
    }

    fn encode(&mut self, packet: &Packet) -> Result<(), protocol::EncodeError> {
        protocol::encode(
            packet,
            self.version,
            &mut self.write_buf,
            self.max_packet_out,
        )
    }

    /// Whether an encoding succeeded; counts or logs why not.
    fn sent(&mut self, encoded: Result<(), protocol::EncodeError>) -> bool {
        match encoded {
            Ok(()) => true,
            Err(protocol::EncodeError::TooLarge) => {
                self.broker.metrics.dropped_too_large.inc();
                false
            }
            Err(e) => {
                tracing::debug!(client_id = %self.client_id, error = %e, "packet not sent");
                false
            }
        }
    }

    /// Accepts a message for this client and sends it if the window allows.
    fn offer(&mut self, queued: QueuedMessage) {
        match self.outgoing.offer(queued) {
            Offer::Send(id, queued) => self.send_publish(id, &queued, false),
            Offer::Queued => {}
            Offer::Dropped => {
                self.broker.metrics.dropped_queue_full.inc();
            }
        }
    }

    /// Sends queued messages while the in-flight window has room.
    fn send_ready(&mut self) {
        while let Some((id, queued)) = self.outgoing.next_resend() {
            self.send_publish(id, &queued, true);
        }
        while let Some((id, queued)) = self.outgoing.next_ready() {
            self.send_publish(id, &queued, false);
        }
    }

    /// Encodes one PUBLISH to the client; expired or oversized messages are dropped.
    fn send_publish(&mut self, packet_id: u16, queued: &QueuedMessage, dup: bool) {
        // A copy recovered from a node that died may have been sent before (never DUP at QoS 0).
        let dup = dup || (queued.maybe_sent && queued.qos != QoS::AtMostOnce);
        let message = &queued.message;
        let now = message.checked_now();
        if now.is_some_and(|now| message.is_expired(now)) {
            self.broker.metrics.dropped_expired.inc();
            self.outgoing.abandon(packet_id);
            return;
        }
        // Chosen now, as it is written to this connection: queued messages and resends after a
        // reconnect go out with this connection's mapping.
        let mut alias = self
            .outbound_aliases
            .choose(self.outbound_alias_max, &message.topic);
        let mut properties = if self.version.is_v5() {
            message.publish_properties(now, &queued.subscription_ids)
        } else {
            None
        };
        if let Some(alias) = alias {
            properties.get_or_insert_with(Default::default).topic_alias = Some(alias.alias());
        }
        let mut packet = Packet::Publish(Publish {
            dup,
            qos: queued.qos,
            retain: queued.retain,
            topic: match alias {
                Some(AliasUse::Known(_)) => Bytes::new(),
                _ => Bytes::copy_from_slice(message.topic.as_bytes()),
            },
            pkid: packet_id,
            payload: message.payload.clone(),
            properties,
        });
        let mut encoded = self.encode(&packet);
        if let (Err(protocol::EncodeError::TooLarge), Some(AliasUse::Assign(_))) = (&encoded, alias)
        {
            // The alias's three bytes may be what took it past the client's maximum packet
            // size: without one it may still fit.
            if let Packet::Publish(publish) = &mut packet {
                strip_alias(&mut publish.properties);
            }
            alias = None;
            encoded = self.encode(&packet);
        }
        if self.sent(encoded) {
            if let (Some(received_at), false) = (message.received_at, dup) {
                self.broker
                    .metrics
                    .delivery_latency
                    .observe(received_at.elapsed().as_secs_f64());
            }
            if let Some(alias) = alias {
                self.outbound_aliases.commit(alias, &message.topic);
            }
            self.broker.metrics.messages_sent[queued.qos as usize].inc();
        } else {
            self.outgoing.abandon(packet_id);
        }
    }

    /// Resends what the previous connection left unacknowledged (its PUBLISHes as far as the
    /// window allows, the rest as it frees), then the queue.
    async fn resume_session(&mut self) -> Result<(), Exit> {
        let releases: Vec<u16> = self
            .outgoing
            .inflight()
            .filter(|m| m.state == InflightState::AwaitingComplete)
            .map(|m| m.packet_id)
            .collect();
        for id in releases {
            self.send(&Packet::PubRel(PubRel::new(id, None)));
        }
        self.send_ready();
        self.flush().await
    }
}

/// Takes the topic alias out of a PUBLISH's properties (and the properties, if nothing is left).
fn strip_alias(properties: &mut Option<crate::protocol::PublishProperties>) {
    if let Some(p) = properties {
        p.topic_alias = None;
        if *p == crate::protocol::PublishProperties::default() {
            *properties = None;
        }
    }
}

async fn write_all_and_flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &[u8],
) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

fn signal_exit(signal: Signal) -> Exit {
    match signal {
        Signal::TakenOver => Exit::TakenOver,
        Signal::Shutdown => Exit::Shutdown { evacuated: false },
        Signal::Evacuate => Exit::Shutdown { evacuated: true },
        Signal::Rebalance => Exit::Moved,
        Signal::Kicked { discard_session } => Exit::Kicked { discard_session },
        Signal::KeepAliveTimeout => Exit::KeepAliveTimeout,
        Signal::Adopted => Exit::Adopted,
    }
}

//! The CONNECT handshake: validation, authentication, session takeover (the claim itself in
//! `cluster/takeover.rs`) and CONNACK.

use super::{Connection, OutboundAliases, Will};
use crate::auth::AuthFailure;
use crate::broker::{Broker, SessionHandle};
use crate::client_info::{now_unix_ms, ClientInfo};
use crate::cluster::takeover::{self, Claimed};
use crate::listener::peer_identity::PeerIdentity;
use crate::mailbox::{Mailbox, Signal};
use crate::message::{ClientId, Message, MessageProperties};
use crate::protocol::{
    self, topic, ConnAck, ConnAckProperties, ConnectPacket, ConnectReturnCode, DecodeError, Packet,
    ProtocolVersion,
};
use crate::session::Outgoing;
use crate::store::{SessionClaim, StoredWill};
use bytes::BytesMut;
use rand::Rng;
use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads CONNECT, checks it, takes over the session and answers CONNACK. `None` when the
/// connection was refused or closed.
///
/// A client whose `identity` is a verified certificate's username is logged in as that user:
/// CONNECT's username and password are not checked (as Mosquitto's `use_identity_as_username`).
pub(super) async fn establish<S>(
    broker: Arc<Broker>,
    mut stream: S,
    peer: SocketAddr,
    identity: PeerIdentity,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let broker = &broker;
    let limits = &broker.config.limits;
    let mut read_buf = BytesMut::with_capacity(256);
    let timeout = Duration::from_secs(limits.connect_timeout_secs);
    let connect = match tokio::time::timeout(
        timeout,
        read_connect(
            &mut stream,
            &mut read_buf,
            limits.max_connect_size.min(limits.max_packet_size),
        ),
    )
    .await
    {
        Ok(Ok(Some(connect))) => connect,
        Ok(Ok(None)) => return None,
        Ok(Err(DecodeError::UnsupportedVersion(level))) => {
            tracing::debug!(%peer, level, "unsupported protocol level");
            refuse(
                &mut stream,
                ProtocolVersion::V3_1_1,
                ConnectReturnCode::UnsupportedProtocolVersion,
            )
            .await;
            return None;
        }
        Ok(Err(e)) => {
            broker.metrics.protocol_errors.inc();
            tracing::debug!(%peer, error = %e, "bad CONNECT");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {timeout:?}");
            return None;
        }
    };
    let version = connect.version;
    if let Err(code) = check_connect(broker, &connect) {
        refuse(&mut stream, version, code).await;
        return None;
    }
    let certified = match identity {
        PeerIdentity::Credentials => None,
        PeerIdentity::Certificate(user) => Some(user),
        PeerIdentity::Unusable(why) => {
            tracing::info!(%peer, reason = %why, "refused: the client certificate gives no username (listeners.tls.username_from_certificate)");
            refuse(&mut stream, version, ConnectReturnCode::NotAuthorized).await;
            return None;
        }
    };
    if certified.is_none() {
        if let Err(code) = authenticate(broker, &connect).await {
            tracing::debug!(%peer, code = ?code, "authentication refused");
            refuse(&mut stream, version, code).await;
            return None;
        }
    }
    let ConnectPacket {
        connect,
        will,
        login,
        ..
    } = connect;
    let properties = connect.properties.unwrap_or_default();
    let (client_id, assigned) = if connect.client_id.is_empty() {
        let id: ClientId = format!("auto-{:016x}", rand::thread_rng().gen::<u64>()).into();
        (id, true)
    } else {
        (ClientId::from(connect.client_id.as_str()), false)
    };
    let username = match certified {
        Some(user) => {
            let claimed = login.as_ref().map(|l| l.username.as_str());
            if claimed.is_some_and(|claimed| claimed != user) {
                tracing::debug!(%peer, user, claimed, "the CONNECT username is ignored for the client certificate's");
            }
            Some(user)
        }
        None => login.as_ref().map(|l| l.username.clone()),
    };

    let will = match will {
        None => None,
        Some(w) => {
            let Ok(topic_name) = std::str::from_utf8(&w.topic) else {
                refuse(&mut stream, version, ConnectReturnCode::MalformedPacket).await;
                return None;
            };
            if topic::validate_name(topic_name, limits.max_topic_length).is_err() {
                refuse(&mut stream, version, ConnectReturnCode::TopicNameInvalid).await;
                return None;
            }
            if !broker
                .auth
                .current()
                .can_publish(&client_id, username.as_deref(), topic_name)
            {
                refuse(&mut stream, version, ConnectReturnCode::NotAuthorized).await;
                return None;
            }
            let (delay, expiry, properties) = match w.properties {
                Some(p) => (
                    p.delay_interval.unwrap_or(0),
                    p.message_expiry_interval,
                    MessageProperties {
                        payload_format_indicator: p.payload_format_indicator,
                        content_type: p.content_type,
                        response_topic: p.response_topic,
                        correlation_data: p.correlation_data,
                        user_properties: p.user_properties,
                    },
                ),
                None => (0, None, MessageProperties::default()),
            };
            Some(Will {
                delay: Duration::from_secs(u64::from(delay)),
                message: Arc::new(Message {
                    topic: topic_name.into(),
                    payload: w.message,
                    qos: w.qos,
                    retain: w.retain,
                    properties,
                    expires_at: Message::expiry_from_interval(
                        expiry,
                        broker.config.session.max_message_expiry_secs,
                        SystemTime::now,
                    ),
                    publisher: Some(client_id.clone()),
                    received_at: None,
                }),
            })
        }
    };

    let max_expiry = broker.config.session.max_session_expiry_secs;
    let requested_expiry = match version {
        ProtocolVersion::V5 => properties.session_expiry_interval.unwrap_or(0),
        _ if connect.clean_start => 0,
        _ => max_expiry,
    };
    let expiry_secs = requested_expiry.min(max_expiry);

    let (keep_alive, server_keep_alive) =
        granted_keep_alive(version, connect.keep_alive, limits.max_keep_alive_secs);
    let connack_properties = version.is_v5().then(|| ConnAckProperties {
        session_expiry_interval: (expiry_secs != requested_expiry).then_some(expiry_secs),
        receive_max: Some(limits.max_inflight),
        max_qos: None,
        retain_available: None,
        max_packet_size: Some(limits.max_packet_size),
        assigned_client_identifier: assigned.then(|| client_id.to_string()),
        topic_alias_max: Some(limits.max_topic_alias),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    });
    // No packet may exceed the client's Maximum Packet Size, the CONNACK included
    // (MQTT-3.1.2-24). Only its session-present bit depends on the session: one that cannot fit
    // is refused here, before any session is taken over.
    if let Some(max) = properties.max_packet_size {
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: connack_properties.clone(),
        });
        if connack.size() > max as usize {
            tracing::debug!(%peer, max, "refused: the CONNACK exceeds the client's maximum packet size");
            refuse_within(
                &mut stream,
                version,
                ConnectReturnCode::PacketTooLarge,
                Some(max),
            )
            .await;
            return None;
        }
    }

    // Take the session over from any connection that holds it, here or (later) elsewhere.
    if let Some(previous) = broker.online_handle(&client_id) {
        previous.mailbox.signal(Signal::TakenOver);
    }
    let session_guard = broker.lock_session(&client_id).await;
    broker.cancel_will(&client_id);
    // Parked here by an adoption, the session still moves in from the node that departed: that
    // node's inbox may hold relays of the messages this node's routes deliver now, and they are
    // recovered (marked DUP) at any moment, possibly before the plain copy arrives here.
    let adopted_here = broker.adopted_here(&client_id);
    let connection_id = broker.next_connection_id();
    let silence_allowed =
        (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)).mul_f32(1.5));
    let mailbox = Arc::new(Mailbox::new(
        limits.max_queued_messages,
        silence_allowed,
        broker.clock_ms(),
    ));
    broker.register(
        client_id.clone(),
        SessionHandle {
            connection_id,
            mailbox: mailbox.clone(),
            persistent: expiry_secs > 0,
            moved_in_until_ms: 0,
            moved_in_relays_until_ms: 0,
            info: Some(Arc::new(ClientInfo {
                username: username.clone(),
                peer,
                protocol: match version {
                    ProtocolVersion::V3_1 => "3.1",
                    ProtocolVersion::V3_1_1 => "3.1.1",
                    ProtocolVersion::V5 => "5",
                }
                .into(),
                connected_at_ms: now_unix_ms(),
                keep_alive_secs: keep_alive,
                session_expiry_secs: expiry_secs,
                clean_start: connect.clean_start,
            })),
        },
    );
    // A shutdown that began after the check above did not see this session: tell it now.
    if broker.is_shutting_down() {
        mailbox.signal(Signal::Shutdown);
    }
    let claim = SessionClaim {
        expiry_secs,
        clean_start: connect.clean_start,
        will: will.as_ref().map(|w| StoredWill {
            message: w.message.clone(),
            delay_secs: u32::try_from(w.delay.as_secs())
                .unwrap_or(u32::MAX)
                .min(expiry_secs),
        }),
        // A session resumed for longer than this connection: what the claim takes from the
        // store is journalled in the same step (in a cluster).
        journal: (expiry_secs > 0 && !connect.clean_start)
            .then(|| broker.journal_reservation(&client_id))
            .flatten(),
    };
    let link = broker.cluster().map(|link| &**link);
    let Some(Claimed {
        generation,
        previous,
        moved_from,
    }) = takeover::claim_session(&*broker.store, link, &client_id, &claim).await
    else {
        broker.deregister(&client_id, connection_id);
        refuse(&mut stream, version, ConnectReturnCode::ServerUnavailable).await;
        return None;
    };
    if moved_from.is_some() || adopted_here {
        broker.mark_moved_in(&client_id, connection_id);
    }
    let stored = match previous {
        Some(old) if connect.clean_start => {
            broker.remove_subscriptions(&client_id, &old.subscriptions);
            None
        }
        other => other,
    };
    let session_present = stored.is_some();

    let window = usize::from(
        properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(limits.max_inflight),
    );
    let mut outgoing = Outgoing::new(window, limits.max_queued_messages);
    let mut subscriptions = BTreeMap::new();
    let mut incoming_qos2 = BTreeSet::new();
    if let Some(stored) = stored {
        // In a cluster the claim journalled these copies and they hold their journal fields
        // (`SessionClaim::journal`): they live in this node's memory from now on.
        outgoing.restore(stored.inflight, stored.queue);
        incoming_qos2.extend(stored.incoming_qos2);
        for s in stored.subscriptions {
            // Already in the routing tree when the session was parked here; not when it was
            // stored by another node of a cluster.
            broker.add_subscription(&client_id, &s.filter, s.options.clone());
            subscriptions.insert(s.filter, s.options);
        }
    }
    // The node the session came from keeps routing it until it hears that this node does
    // (`cluster::handoff`): from here on, every relay this node reads reaches the session.
    if let (Some(old_node), Some(link)) = (moved_from.as_deref(), link) {
        link.routed_here(old_node, &client_id);
    }

    let connack = ConnAck {
        // MQTT 3.1 has no session-present flag: that CONNACK byte is reserved and must be 0.
        session_present: session_present && version != ProtocolVersion::V3_1,
        code: ConnectReturnCode::Success,
        properties: connack_properties,
    };
    let mut write_buf = BytesMut::new();
    if protocol::encode(&Packet::ConnAck(connack), version, &mut write_buf, None).is_err() {
        broker.deregister(&client_id, connection_id);
        return None;
    }
    tracing::debug!(client_id = %client_id, %peer, version = version.label(), session_present, "client connected");

    Some(Connection {
        broker: broker.clone(),
        stream,
        peer,
        version,
        client_id,
        username,
        connection_id,
        read_buf,
        write_buf,
        max_packet_in: limits.max_packet_size,
        max_packet_out: properties.max_packet_size,
        topic_alias_max: limits.max_topic_alias,
        topic_aliases: BTreeMap::new(),
        // A client that announces no Topic Alias Maximum (and every 3.x client) allows none.
        outbound_alias_max: if version.is_v5() {
            properties
                .topic_alias_max
                .unwrap_or(0)
                .min(limits.max_outbound_topic_alias)
        } else {
            0
        },
        outbound_aliases: OutboundAliases::default(),
        expiry_secs,
        generation,
        connect_expiry_was_zero: requested_expiry == 0,
        subscriptions,
        outgoing,
        incoming_qos2,
        will,
        mailbox,
        arrived: VecDeque::new(),
        publishing: crate::broker::Publishing::default(),
        unconfirmed: false,
        _session_guard: session_guard,
    })
}

/// Reads until a whole CONNECT has arrived; `Ok(None)` if the peer closed first.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_packet_size: u32,
) -> Result<Option<ConnectPacket>, DecodeError> {
    loop {
        if let Some(connect) = protocol::decode_connect(buf, max_packet_size)? {
            return Ok(Some(connect));
        }
        buf.reserve(256);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Checks what must hold before a session is touched; the error is the CONNACK code to refuse with.
fn check_connect(broker: &Broker, c: &ConnectPacket) -> Result<(), ConnectReturnCode> {
    if broker.is_shutting_down() {
        return Err(ConnectReturnCode::ServerUnavailable);
    }
    if broker.evacuation.is_evacuating() || broker.rebalancing.is_refusing() {
        return Err(ConnectReturnCode::UseAnotherServer);
    }
    let id = &c.connect.client_id;
    if id.is_empty()
        && (c.version == ProtocolVersion::V3_1 || (!c.version.is_v5() && !c.connect.clean_start))
    {
        return Err(ConnectReturnCode::ClientIdentifierNotValid);
    }
    if id.contains(['\0', '/', '+', '#']) {
        return Err(ConnectReturnCode::ClientIdentifierNotValid);
    }
    if !c.version.is_v5()
        && keep_alive_exceeds(
            c.connect.keep_alive,
            broker.config.limits.max_keep_alive_secs,
        )
    {
        // MQTT 3.1/3.1.1 cannot tell a client to use a shorter keep-alive; enforcing one it does
        // not know of would close it again and again. It is refused instead, with the code
        // Mosquitto's `max_keepalive` uses (0x02, the only one that stops a retrying client).
        tracing::info!(
            client_id = %id,
            keep_alive = c.connect.keep_alive,
            max = broker.config.limits.max_keep_alive_secs,
            "MQTT 3.x client refused: its keep-alive is 0 or above limits.max_keep_alive_secs"
        );
        return Err(ConnectReturnCode::ClientIdentifierNotValid);
    }
    if let Some(props) = &c.connect.properties {
        if props.authentication_method.is_some() {
            return Err(ConnectReturnCode::BadAuthenticationMethod);
        }
        if props.receive_maximum == Some(0) || props.max_packet_size == Some(0) {
            return Err(ConnectReturnCode::ProtocolError);
        }
    }
    Ok(())
}

/// Whether a client's keep-alive (0: none) is beyond `max` (0: no maximum).
fn keep_alive_exceeds(asked: u16, max: u16) -> bool {
    max > 0 && (asked == 0 || asked > max)
}

/// The keep-alive the broker enforces and, for an MQTT 5 client asking for none or for more than
/// `max`, the Server Keep Alive that tells it so (`max`). MQTT 3.x clients beyond `max` were
/// refused in [`check_connect`].
fn granted_keep_alive(version: ProtocolVersion, asked: u16, max: u16) -> (u16, Option<u16>) {
    if version.is_v5() && keep_alive_exceeds(asked, max) {
        (max, Some(max))
    } else {
        (asked, None)
    }
}

/// Checks the credentials. A password verified lately is checked at once (a keyed hash);
/// otherwise off the async workers, at most one argon2 verification per core at a time (each
/// takes tens of milliseconds of CPU and 19 MiB): a reconnect storm queues here instead of
/// starving the health endpoint and the connected clients.
async fn authenticate(broker: &Arc<Broker>, c: &ConnectPacket) -> Result<(), ConnectReturnCode> {
    let auth = broker.auth.current();
    let username = c.login.as_ref().map(|l| l.username.as_str());
    let password = c.login.as_ref().map(|l| l.password.as_bytes());
    if !auth.checks_passwords() {
        return auth.authenticate(username, None).map_err(refusal_code);
    }
    if auth.verified_before(username, password) {
        return Ok(());
    }
    drop(auth);
    // A client still waiting after this has most likely given up: refuse (it retries later)
    // rather than verify for nobody.
    let turn = tokio::time::timeout(VERIFY_WAIT, verifying().acquire()).await;
    let Ok(Ok(_turn)) = turn else {
        return Err(ConnectReturnCode::ServerUnavailable);
    };
    let login = c.login.clone();
    let broker = broker.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        let (username, password) = match &login {
            Some(l) => (Some(l.username.as_str()), Some(l.password.as_bytes())),
            None => (None, None),
        };
        broker.auth.current().authenticate(username, password)
    })
    .await;
    match verdict {
        Ok(result) => result.map_err(refusal_code),
        Err(_) => Err(ConnectReturnCode::NotAuthorized),
    }
}

/// The longest a CONNECT waits for its turn to have its password verified.
const VERIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One argon2 verification per core at a time, process-wide.
fn verifying() -> &'static tokio::sync::Semaphore {
    static VERIFYING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    VERIFYING.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

fn refusal_code(failure: AuthFailure) -> ConnectReturnCode {
    match failure {
        AuthFailure::BadCredentials => ConnectReturnCode::BadUserNamePassword,
        AuthFailure::NotAuthorized => ConnectReturnCode::NotAuthorized,
    }
}

/// Sends a refusing CONNACK and closes.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: ProtocolVersion,
    code: ConnectReturnCode,
) {
    refuse_within(stream, version, code, None).await
}

/// Sends a refusing CONNACK, if it fits in `max` bytes, and closes.
async fn refuse_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: ProtocolVersion,
    code: ConnectReturnCode,
    max: Option<u32>,
) {
    let mut buf = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties: None,
    });
    // Not even a refusal is sent where it does not fit; the connection is closed all the same.
    if protocol::encode(&connack, version, &mut buf, max).is_err() {
        buf.clear();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&buf).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

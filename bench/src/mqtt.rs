//! A small MQTT 3.1.1 load-generating client on top of rumqttc's packet codec.
//!
//! Publishers write [`PublishPlan::per_write`] PUBLISH packets per `write_all`
//! (a batch of up to [`BATCH`], or one as a device sends) and stamp each
//! payload with its send time and the publisher's index; subscribers record
//! the delivery latency and count deliveries per publisher.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use rumqttc::mqttbytes::v4::{
    ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, Duration, Instant};

/// Largest packet accepted from a broker.
const MAX_PACKET: usize = 1 << 20;
/// Payload size of every benchmark message; the first 8 bytes carry the send
/// stamp, the next 4 the publisher's index.
pub const PAYLOAD_LEN: usize = 64;
/// Messages encoded per `write_all` at most by the batched publishers.
pub const BATCH: usize = 128;
/// Keep-alive announced in CONNECT; longer than any run, so no pings are needed.
pub const KEEP_ALIVE_SECS: u16 = 600;

static PAYLOAD: [u8; PAYLOAD_LEN] = [0; PAYLOAD_LEN];

/// Time base shared by all clients of a run: stamps are ns since `base`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: StdInstant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base: StdInstant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A latency histogram in nanoseconds (1 ns .. 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Buffers bytes from a socket and splits them into MQTT packets.
pub struct PacketReader<R> {
    io: R,
    buf: BytesMut,
    chunk: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// `chunk` is how much buffer space is reserved before each read.
    pub fn new(io: R, chunk: usize) -> Self {
        PacketReader {
            io,
            buf: BytesMut::with_capacity(chunk),
            chunk,
        }
    }

    /// Reads whatever the socket has; fails when the broker closed it.
    pub async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        let n = self.io.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("broker closed the connection");
        }
        Ok(())
    }

    /// The next complete packet already buffered, if any.
    pub fn next_buffered(&mut self) -> Result<Option<Packet>> {
        match Packet::read(&mut self.buf, MAX_PACKET) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(anyhow!("malformed packet from broker: {e}")),
        }
    }

    /// Waits for the next packet.
    pub async fn next(&mut self) -> Result<Packet> {
        loop {
            if let Some(packet) = self.next_buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

/// Sends CONNECT (clean session) on `stream` and waits for a successful CONNACK.
pub async fn handshake(stream: &mut TcpStream, client_id: &str) -> Result<()> {
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(client_id);
    connect.keep_alive = KEEP_ALIVE_SECS;
    connect.clean_session = true;
    let mut out = BytesMut::with_capacity(64);
    connect.write(&mut out)?;
    stream.write_all(&out).await?;
    let (read, _) = stream.split();
    match PacketReader::new(read, 64).next().await? {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(()),
        Packet::ConnAck(ack) => bail!("connection refused: {:?}", ack.code),
        other => bail!("expected CONNACK, got {other:?}"),
    }
}

/// Client connections per loopback source address before the next one is
/// used: each address offers the ephemeral port range (about 28,000 ports by
/// default) and every connection to the one broker port takes one.
pub const CLIENTS_PER_SOURCE_ADDR: usize = 20_000;

/// The source address for client `k` of `total` connecting to `target`.
/// `None` (the system picks, as usual) unless a loopback IPv4 target gets more
/// than [`CLIENTS_PER_SOURCE_ADDR`] clients: then 127.0.0.1, 127.0.0.2, ...
/// in turn, as many as needed.
pub fn source_addr(k: usize, total: usize, target: SocketAddr) -> Option<IpAddr> {
    let loopback_v4 = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    if total <= CLIENTS_PER_SOURCE_ADDR || !loopback_v4 {
        return None;
    }
    let addrs = total.div_ceil(CLIENTS_PER_SOURCE_ADDR).min(254);
    let host = u8::try_from(1 + k % addrs).unwrap_or(1);
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

/// Opens a TCP connection to `addr`, bound to `source` (any port) if given.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"));
    };
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("creating a TCP socket")?;
    socket
        .bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("binding a client socket to {ip}"))?;
    socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr} from {ip}"))
}

/// An MQTT session split into a buffered reader and a writer.
pub struct Session {
    pub reader: PacketReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Session {
    /// Connects over TCP, from `source` (any port) if given, and completes the
    /// MQTT handshake. Many loopback connections need several source addresses:
    /// each one offers only the ephemeral port range.
    ///
    /// The socket gets TCP_NODELAY, so Nagle's algorithm never holds back a
    /// small write waiting for an ACK: what a publisher hands to one
    /// `write_all` leaves as it was written, and one PUBLISH per write stays
    /// one PUBLISH per segment unless the kernel itself coalesces.
    pub async fn connect_from(
        addr: SocketAddr,
        source: Option<IpAddr>,
        client_id: &str,
    ) -> Result<Self> {
        let mut stream = tcp_connect(addr, source).await?;
        stream
            .set_nodelay(true)
            .context("setting TCP_NODELAY on a client socket")?;
        handshake(&mut stream, client_id)
            .await
            .with_context(|| format!("MQTT handshake of {client_id}"))?;
        let (read, writer) = stream.into_split();
        Ok(Session {
            reader: PacketReader::new(read, 64 * 1024),
            writer,
        })
    }

    /// Subscribes to one filter and waits for a granted SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        let mut subscribe = Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        let mut out = BytesMut::new();
        subscribe.write(&mut out)?;
        self.writer.write_all(&out).await?;
        loop {
            match self.reader.next().await? {
                Packet::SubAck(SubAck {
                    pkid: 1,
                    return_codes,
                }) => {
                    return match return_codes.first() {
                        Some(SubscribeReasonCode::Success(_)) => Ok(()),
                        other => Err(anyhow!("subscription to {filter} refused: {other:?}")),
                    };
                }
                Packet::Publish(_) => {}
                other => bail!("expected SUBACK, got {other:?}"),
            }
        }
    }
}

/// What a subscriber saw before the deadline.
pub struct SubscriberStats {
    pub received: u64,
    pub latency: Histogram<u64>,
    /// Deliveries by the index of the publisher that sent them.
    pub per_publisher: Vec<u64>,
}

/// Receives publishes until `deadline`, recording latency and acking QoS 1.
pub async fn run_subscriber(
    mut session: Session,
    clock: Clock,
    deadline: Instant,
) -> Result<SubscriberStats> {
    let mut stats = SubscriberStats {
        received: 0,
        latency: new_histogram(),
        per_publisher: Vec::new(),
    };
    let mut acks = BytesMut::with_capacity(4096);
    loop {
        tokio::select! {
            r = session.reader.fill() => r?,
            _ = sleep_until(deadline) => break,
        }
        let now = clock.now_ns();
        acks.clear();
        while let Some(packet) = session.reader.next_buffered()? {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            let sent = read_stamp(&publish.payload)?;
            let from = read_publisher(&publish.payload)? as usize;
            if stats.per_publisher.len() <= from {
                stats.per_publisher.resize(from + 1, 0);
            }
            stats.per_publisher[from] += 1;
            stats.received += 1;
            stats
                .latency
                .saturating_record(now.saturating_sub(sent).max(1));
            match publish.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    PubAck::new(publish.pkid).write(&mut acks)?;
                }
                QoS::ExactlyOnce => bail!("unexpected QoS 2 delivery"),
            }
        }
        if !acks.is_empty() {
            tokio::select! {
                r = session.writer.write_all(&acks) => r?,
                _ = sleep_until(deadline) => break,
            }
        }
    }
    Ok(stats)
}

/// The send stamp carried in the first 8 bytes of a benchmark payload.
pub fn read_stamp(payload: &[u8]) -> Result<u64> {
    let head: [u8; 8] = payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("payload of {} bytes carries no stamp", payload.len()))?;
    Ok(u64::from_be_bytes(head))
}

/// The publisher index carried in bytes 8..12 of a benchmark payload.
pub fn read_publisher(payload: &[u8]) -> Result<u32> {
    let bytes: [u8; 4] = payload
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("payload of {} bytes carries no publisher", payload.len()))?;
    Ok(u32::from_be_bytes(bytes))
}

/// How a publisher sends.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub topic: String,
    pub qos: QoS,
    /// Index of this publisher in its flow, carried in every payload.
    pub index: u32,
    /// Most QoS 1 publishes left without PUBACK at once.
    pub window: usize,
    /// Most PUBLISH packets handed to one `write_all`: [`BATCH`] for the
    /// batched scenarios, 1 for device-shaped ones (every message its own write).
    pub per_write: usize,
    /// This publisher's fixed rate in msgs/s; `None` = as fast as the socket
    /// (and the QoS 1 window) allows.
    pub rate: Option<f64>,
    /// With a rate: where this publisher's schedule sits within one interval,
    /// in (0, 1]; message k is due `(k + offset) / rate` s after the start.
    /// Spreading the offsets of many publishers keeps them from sending in
    /// lockstep.
    pub offset: f64,
}

/// What a publisher did before the deadline.
pub struct PublisherStats {
    pub sent: u64,
    /// `write_all` calls that carried the messages.
    pub writes: u64,
    /// With a fixed rate: the most a batch was sent behind its schedule.
    /// Stamps are actual send times (the timer's 1 ms granularity would
    /// otherwise dominate), so this shows any coordinated omission.
    pub max_lag_ns: u64,
}

/// Publishes until `deadline`, stamping each payload with its send time.
pub async fn run_publisher(
    session: Session,
    plan: PublishPlan,
    clock: Clock,
    deadline: Instant,
) -> Result<PublisherStats> {
    let Session { reader, mut writer } = session;
    let window = (plan.qos == QoS::AtLeastOnce).then(|| Arc::new(Semaphore::new(plan.window)));
    let acker = window
        .clone()
        .map(|w| tokio::spawn(count_acks(reader, w, deadline)));

    let per_write = plan.per_write.max(1) as u64;
    let index = plan.index.to_be_bytes();
    let mut publish = Publish::from_bytes(plan.topic, plan.qos, Bytes::from_static(&PAYLOAD));
    let mut out = BytesMut::with_capacity(per_write as usize * (PAYLOAD_LEN + 32));
    let expired = sleep_until(deadline);
    tokio::pin!(expired);
    let start = Instant::now();
    let start_ns = clock.now_ns();
    let mut sent: u64 = 0;
    let mut writes: u64 = 0;
    let mut max_lag_ns: u64 = 0;
    let mut pkid: u16 = 0;
    while Instant::now() < deadline {
        let mut n = per_write;
        if let Some(rate) = plan.rate {
            let due = due_count(start.elapsed().as_secs_f64(), rate, plan.offset);
            if due <= sent {
                let next = start + Duration::from_secs_f64((sent as f64 + plan.offset) / rate);
                sleep_until(next.min(deadline)).await;
                continue;
            }
            n = n.min(due - sent);
        }
        if let Some(window) = &window {
            let Some(granted) = take_permits(window, n, deadline).await? else {
                break;
            };
            n = granted;
        }
        out.clear();
        let now_ns = clock.now_ns();
        if let Some(rate) = plan.rate {
            let scheduled_ns = start_ns + ((sent as f64 + plan.offset) * 1e9 / rate) as u64;
            max_lag_ns = max_lag_ns.max(now_ns.saturating_sub(scheduled_ns));
        }
        for _ in 0..n {
            if plan.qos != QoS::AtMostOnce {
                pkid = pkid.checked_add(1).unwrap_or(1);
                publish.pkid = pkid;
            }
            publish.write(&mut out)?;
            let at = out.len() - PAYLOAD_LEN;
            out[at..at + 8].copy_from_slice(&now_ns.to_be_bytes());
            out[at + 8..at + 12].copy_from_slice(&index);
        }
        tokio::select! {
            r = writer.write_all(&out) => r.context("publishing")?,
            _ = &mut expired => break,
        }
        sent += n;
        writes += 1;
    }
    if let Some(acker) = acker {
        acker.await.context("ack reader panicked")??;
    }
    Ok(PublisherStats {
        sent,
        writes,
        max_lag_ns,
    })
}

/// How many messages are due `elapsed` seconds after the start at `rate`
/// msgs/s when message k is due at `(k + offset) / rate`.
fn due_count(elapsed: f64, rate: f64, offset: f64) -> u64 {
    let x = elapsed * rate - offset;
    if x < 0.0 {
        0
    } else {
        x as u64 + 1
    }
}

/// Waits for at least one free window slot and takes up to `want`.
/// Returns `None` if the deadline passed first.
async fn take_permits(window: &Semaphore, want: u64, deadline: Instant) -> Result<Option<u64>> {
    let first = tokio::select! {
        p = window.acquire() => p.context("ack window closed")?,
        _ = sleep_until(deadline) => return Ok(None),
    };
    first.forget();
    let mut got = 1;
    while got < want {
        match window.try_acquire() {
            Ok(permit) => {
                permit.forget();
                got += 1;
            }
            Err(_) => break,
        }
    }
    Ok(Some(got))
}

/// Reads PUBACKs until the deadline, freeing one window slot per ack.
async fn count_acks(
    mut reader: PacketReader<OwnedReadHalf>,
    window: Arc<Semaphore>,
    deadline: Instant,
) -> Result<()> {
    loop {
        tokio::select! {
            r = reader.fill() => r?,
            _ = sleep_until(deadline) => return Ok(()),
        }
        let mut acked = 0;
        while let Some(packet) = reader.next_buffered()? {
            if let Packet::PubAck(_) = packet {
                acked += 1;
            }
        }
        window.add_permits(acked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_through_an_encoded_publish() {
        let mut publish =
            Publish::from_bytes("bench/in", QoS::AtLeastOnce, Bytes::from_static(&PAYLOAD));
        publish.pkid = 7;
        let mut out = BytesMut::new();
        publish.write(&mut out).unwrap();
        let at = out.len() - PAYLOAD_LEN;
        out[at..at + 8].copy_from_slice(&123_456_789u64.to_be_bytes());
        let Packet::Publish(decoded) = Packet::read(&mut out, MAX_PACKET).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(decoded.pkid, 7);
        assert_eq!(read_stamp(&decoded.payload).unwrap(), 123_456_789);
    }

    #[test]
    fn short_payload_has_no_stamp() {
        assert!(read_stamp(&[1, 2, 3]).is_err());
        assert!(read_publisher(&[0; 10]).is_err());
    }

    #[test]
    fn source_addresses_spread_only_many_loopback_clients() {
        let target: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(source_addr(0, CLIENTS_PER_SOURCE_ADDR, target), None);
        let other: SocketAddr = "10.0.0.1:1883".parse().unwrap();
        assert_eq!(source_addr(0, 50_000, other), None);
        // 50,000 clients: three addresses in turn, at most 16,667 each.
        let ips: Vec<_> = (0..4).map(|k| source_addr(k, 50_000, target)).collect();
        let ip = |h| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, h)));
        assert_eq!(ips, [ip(1), ip(2), ip(3), ip(1)]);
    }

    #[tokio::test]
    async fn a_client_socket_can_come_from_another_loopback_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let (client, accepted) = tokio::join!(tcp_connect(addr, Some(source)), listener.accept());
        assert_eq!(client.unwrap().local_addr().unwrap().ip(), source);
        assert_eq!(accepted.unwrap().1.ip(), source);
    }

    #[test]
    fn publisher_index_follows_the_stamp() {
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..8].copy_from_slice(&5u64.to_be_bytes());
        payload[8..12].copy_from_slice(&4242u32.to_be_bytes());
        assert_eq!(read_stamp(&payload).unwrap(), 5);
        assert_eq!(read_publisher(&payload).unwrap(), 4242);
    }

    #[test]
    fn schedule_with_offset_one_is_one_message_per_interval() {
        // offset 1: message k due at (k + 1) / rate, as the single-publisher latency run.
        assert_eq!(due_count(0.0, 1000.0, 1.0), 0);
        assert_eq!(due_count(0.0009, 1000.0, 1.0), 0);
        assert_eq!(due_count(0.001, 1000.0, 1.0), 1);
        assert_eq!(due_count(0.0105, 1000.0, 1.0), 10);
    }

    #[test]
    fn schedule_offsets_spread_publishers_within_an_interval() {
        // 100 msgs/s: intervals of 10 ms; offset 0.25 puts the first message at 2.5 ms.
        assert_eq!(due_count(0.002, 100.0, 0.25), 0);
        assert_eq!(due_count(0.0025, 100.0, 0.25), 1);
        assert_eq!(due_count(0.0124, 100.0, 0.25), 1);
        assert_eq!(due_count(0.0125, 100.0, 0.25), 2);
    }
}

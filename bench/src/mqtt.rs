//! A small MQTT 3.1.1 load-generating client on top of rumqttc's packet codec.
//!
//! Publishers write in batches (one `write_all` per filled buffer) and stamp
//! each payload with a send time; subscribers record the delivery latency.

use std::net::SocketAddr;
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
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, Duration, Instant};

/// Largest packet accepted from a broker.
const MAX_PACKET: usize = 1 << 20;
/// Payload size of every benchmark message; the first 8 bytes carry the stamp.
pub const PAYLOAD_LEN: usize = 64;
/// Messages encoded per `write_all` at most.
const BATCH: usize = 128;
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

/// An MQTT session split into a buffered reader and a writer.
pub struct Session {
    pub reader: PacketReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Session {
    /// Connects over TCP and completes the MQTT handshake.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Result<Self> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
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

/// How a publisher sends.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub topic: String,
    pub qos: QoS,
    /// Most QoS 1 publishes left without PUBACK at once.
    pub window: usize,
    /// Fixed total rate in msgs/s; `None` = as fast as the socket allows.
    pub rate: Option<f64>,
}

/// What a publisher did before the deadline.
pub struct PublisherStats {
    pub sent: u64,
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

    let mut publish = Publish::from_bytes(plan.topic, plan.qos, Bytes::from_static(&PAYLOAD));
    let mut out = BytesMut::with_capacity(BATCH * (PAYLOAD_LEN + 32));
    let start = Instant::now();
    let start_ns = clock.now_ns();
    let mut sent: u64 = 0;
    let mut max_lag_ns: u64 = 0;
    let mut pkid: u16 = 0;
    while Instant::now() < deadline {
        let mut n = BATCH as u64;
        if let Some(rate) = plan.rate {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if due <= sent {
                let next = start + Duration::from_secs_f64((sent + 1) as f64 / rate);
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
            let scheduled_ns = start_ns + (sent as f64 * 1e9 / rate) as u64;
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
        }
        tokio::select! {
            r = writer.write_all(&out) => r.context("publishing")?,
            _ = sleep_until(deadline) => break,
        }
        sent += n;
    }
    if let Some(acker) = acker {
        acker.await.context("ack reader panicked")??;
    }
    Ok(PublisherStats { sent, max_lag_ns })
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
    }
}

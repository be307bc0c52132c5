//! Sequences of client actions (CONNECT, PUBLISH at every QoS, acknowledgements in any order,
//! SUBSCRIBE/UNSUBSCRIBE, PINGREQ, DISCONNECT, garbage, closing the socket) from up to three
//! clients at once, through the broker's real connection code (`connection::serve`) over
//! in-memory streams, on a broker with the in-memory store and the default configuration.
//!
//! Everything the broker writes is decoded and checked against what the client sent; see
//! `Conn::check` for the properties. A panic anywhere (the broker's tasks included) aborts.
//!
//! The input is a little program: one opcode byte per action followed by its parameter bytes;
//! missing bytes read as zero. `scripts/session_seeds.py` writes the seeds in this format.

#![no_main]

use bytes::{Buf, BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use starling_broker::auth::Auth;
use starling_broker::broker::Broker;
use starling_broker::store::MemoryStore;
use starling_config::BrokerConfig;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;

/// Clients that may be connected at once.
const SLOTS: usize = 3;
/// Actions per input, at most.
const MAX_ACTIONS: usize = 128;
/// Bytes each direction of a connection buffers before its writer waits.
const PIPE: usize = 256 * 1024;

const CLIENT_IDS: [&str; 4] = ["a", "b", "c", ""];
const TOPICS: [&str; 10] = [
    "t",
    "t/a",
    "t/b/c",
    "$SYS/x",
    "$share/g/t",
    "s/1",
    "",
    "a/+",
    "#",
    "t/a/",
];
const FILTERS: [&str; 16] = [
    "#",
    "t",
    "t/+",
    "t/#",
    "+/+",
    "$SYS/#",
    "$share/g/t/#",
    "$share/g/#",
    "$share/h/t",
    "t/#/x",
    "",
    "+",
    "s/1",
    "$share/g",
    "t/a",
    "$share//t",
];

/// Reads the input; past its end every byte is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        taken
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    V31,
    V311,
    V5,
}

// ---- Encoding what clients send (by hand, so that any combination can be written) ----

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn frame(first: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(first);
    put_varint(&mut out, body.len());
    out.put_slice(body);
    out
}

/// A v5 property block.
fn props(body: &mut BytesMut, props: &[u8]) {
    put_varint(body, props.len());
    body.put_slice(props);
}

/// What a CONNECT asked for that limits what the broker may send back.
#[derive(Default, Clone, Copy)]
struct Asked {
    receive_max: Option<u16>,
    max_packet: Option<u32>,
}

fn connect(input: &mut Input, version: Version) -> (BytesMut, String, Asked) {
    let flags_byte = input.byte();
    let client_id = input.pick(&CLIENT_IDS);
    let keep_alive = input.pick(&[0u16, 1, 30, 65535]);
    let clean = flags_byte & 1 != 0;
    let will = flags_byte & 2 != 0;
    let will_qos = (flags_byte >> 2) % 3;
    let will_retain = flags_byte & 0x10 != 0;
    let mut asked = Asked::default();
    let mut body = BytesMut::new();
    match version {
        Version::V31 => {
            put_str(&mut body, b"MQIsdp");
            body.put_u8(3);
        }
        Version::V311 => {
            put_str(&mut body, b"MQTT");
            body.put_u8(4);
        }
        Version::V5 => {
            put_str(&mut body, b"MQTT");
            body.put_u8(5);
        }
    }
    let mut flags = 0u8;
    if clean {
        flags |= 0x02;
    }
    if will {
        flags |= 0x04 | (will_qos << 3);
        if will_retain {
            flags |= 0x20;
        }
    }
    body.put_u8(flags);
    body.put_u16(keep_alive);
    if version == Version::V5 {
        let p = input.byte();
        let mut block = BytesMut::new();
        if p & 0x03 != 0 {
            block.put_u8(0x11);
            block.put_u32([0, 0, 10, u32::MAX][usize::from(p & 0x03)]);
        }
        if p & 0x0c != 0 {
            let v = [0u16, 1, 2, 10][usize::from((p >> 2) & 0x03)];
            asked.receive_max = Some(v);
            block.put_u8(0x21);
            block.put_u16(v);
        }
        if p & 0x30 != 0 {
            let v = [0u32, 24, 64, 1024][usize::from((p >> 4) & 0x03)];
            asked.max_packet = Some(v);
            block.put_u8(0x27);
            block.put_u32(v);
        }
        if p & 0x40 != 0 {
            block.put_u8(0x22);
            block.put_u16(2);
        }
        if p & 0x80 != 0 {
            // Request problem information: 0 (no reason strings), a valid value.
            block.put_u8(0x17);
            block.put_u8(0);
        }
        props(&mut body, &block);
    }
    put_str(&mut body, client_id.as_bytes());
    if will {
        if version == Version::V5 {
            let p = input.byte();
            let mut block = BytesMut::new();
            if p & 0x03 != 0 {
                block.put_u8(0x18);
                block.put_u32([0, 0, 5, u32::MAX][usize::from(p & 0x03)]);
            }
            if p & 0x04 != 0 {
                block.put_u8(0x02);
                block.put_u32(3600);
            }
            props(&mut body, &block);
        }
        put_str(&mut body, input.pick(&TOPICS).as_bytes());
        put_str(&mut body, b"will");
    }
    (frame(0x10, &body), client_id.to_string(), asked)
}

fn publish(input: &mut Input, version: Version) -> (BytesMut, u8, u16) {
    let flags = input.byte();
    let qos = (flags & 0x03) % 3;
    let retain = flags & 0x04 != 0;
    let dup = flags & 0x08 != 0 && qos > 0;
    let pkid = u16::from(input.byte() % 16);
    let topic = input.pick(&TOPICS);
    let payload_len = usize::from(input.byte() % 8);
    let mut body = BytesMut::new();
    let mut topic_bytes = topic.as_bytes();
    let mut block = BytesMut::new();
    if version == Version::V5 {
        let p = input.byte();
        if p & 0x03 != 0 {
            // A topic alias: 1 and 2 are in range of the default limit, 65 is not.
            block.put_u8(0x23);
            block.put_u16([0u16, 1, 2, 65][usize::from(p & 0x03)]);
            if p & 0x04 != 0 {
                topic_bytes = b"";
            }
        }
        if p & 0x08 != 0 {
            block.put_u8(0x02);
            block.put_u32(if p & 0x10 != 0 { 3600 } else { u32::MAX });
        }
        if p & 0x20 != 0 {
            block.put_u8(0x01);
            block.put_u8(1);
        }
        if p & 0x40 != 0 {
            block.put_u8(0x08);
            put_str(&mut block, b"t/reply");
        }
        if p & 0x80 != 0 {
            block.put_u8(0x0B); // subscription identifier: not allowed from clients
            put_varint(&mut block, 1);
        }
    }
    put_str(&mut body, topic_bytes);
    if qos > 0 {
        body.put_u16(pkid);
    }
    if version == Version::V5 {
        props(&mut body, &block);
    }
    body.put_slice(&vec![b'x'; payload_len]);
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    (frame(first, &body), qos, pkid)
}

fn ack(kind: u8, pkid: u16, version: Version, reason: u8) -> BytesMut {
    let first = match kind {
        0 => 0x40, // PUBACK
        1 => 0x50, // PUBREC
        2 => 0x62, // PUBREL
        _ => 0x70, // PUBCOMP
    };
    let mut body = BytesMut::new();
    body.put_u16(pkid);
    if version == Version::V5 && reason != 0 {
        let code = match kind {
            0 | 1 => [0x10, 0x80, 0x87, 0x97][usize::from(reason % 4)],
            _ => 0x92,
        };
        body.put_u8(code);
        if reason & 0x04 != 0 {
            props(&mut body, &[]);
        }
    }
    frame(first, &body)
}

fn subscribe(input: &mut Input, version: Version) -> (BytesMut, u16, usize) {
    let pkid = u16::from(input.byte() % 16);
    let count = usize::from(input.byte() % 3) + 1;
    let mut body = BytesMut::new();
    body.put_u16(pkid);
    if version == Version::V5 {
        let p = input.byte();
        if p & 0x01 != 0 {
            let mut block = BytesMut::new();
            block.put_u8(0x0B);
            put_varint(&mut block, usize::from(p >> 1));
            props(&mut body, &block);
        } else {
            props(&mut body, &[]);
        }
    }
    for _ in 0..count {
        let filter = input.pick(&FILTERS);
        let options = input.byte();
        put_str(&mut body, filter.as_bytes());
        body.put_u8(if options >= 0xf0 {
            // Now and then, reserved bits or values.
            options
        } else if version == Version::V5 {
            // QoS, no local, retain as published, retain handling.
            (options & 0x0c) | ((options & 0x03) % 3) | ((((options >> 4) & 0x03) % 3) << 4)
        } else {
            (options & 0x03) % 3
        });
    }
    (frame(0x82, &body), pkid, count)
}

fn unsubscribe(input: &mut Input, version: Version) -> (BytesMut, u16, usize) {
    let pkid = u16::from(input.byte() % 16);
    let count = usize::from(input.byte() % 3) + 1;
    let mut body = BytesMut::new();
    body.put_u16(pkid);
    if version == Version::V5 {
        props(&mut body, &[]);
    }
    for _ in 0..count {
        put_str(&mut body, input.pick(&FILTERS).as_bytes());
    }
    (frame(0xA2, &body), pkid, count)
}

fn disconnect(input: &mut Input, version: Version) -> BytesMut {
    if version != Version::V5 {
        return frame(0xE0, &[]);
    }
    let p = input.byte();
    let mut body = BytesMut::new();
    match p % 4 {
        0 => {}
        1 => body.put_u8(0x04), // with will message
        2 => {
            body.put_u8(0x00);
            let mut block = BytesMut::new();
            block.put_u8(0x11);
            block.put_u32([0, 30, u32::MAX, 5][usize::from((p >> 2) % 4)]);
            props(&mut body, &block);
        }
        _ => body.put_u8(0x81),
    }
    frame(0xE0, &body)
}

// ---- Decoding and checking what the broker sends ----

/// A packet as the broker sent it, reduced to what the checks look at.
#[derive(Debug)]
enum Out {
    ConnAck {
        success: bool,
    },
    Publish {
        qos: u8,
        pkid: u16,
        dup: bool,
        topic: Vec<u8>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    SubAck {
        pkid: u16,
        codes: usize,
    },
    UnsubAck {
        pkid: u16,
        codes: Option<usize>,
    },
    PingResp,
    Disconnect,
    Other(&'static str),
}

fn decode_out(buf: &mut BytesMut, version: Version) -> Result<Option<(Out, usize)>, String> {
    use rumqttc::mqttbytes::v4 as w4;
    use rumqttc::v5::mqttbytes::v5 as w5;
    // Frame length first: the header check is the codec's own.
    let header = match rumqttc::v5::mqttbytes::v5::check(buf.iter(), None) {
        Ok(h) => h,
        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(format!("bad fixed header: {e:?}")),
    };
    let len = header.frame_length();
    let first = buf[0];
    if version == Version::V5 {
        if first == 0xE0 && (len == 2 || len == 3) {
            // DISCONNECT with no body or a reason code only: legal, beyond rumqttc's decoder.
            buf.advance(len);
            return Ok(Some((Out::Disconnect, len)));
        }
        let packet = w5::Packet::read(buf, None).map_err(|e| format!("v5 decode: {e:?}"))?;
        let out = match packet {
            w5::Packet::ConnAck(c) => Out::ConnAck {
                success: c.code == w5::ConnectReturnCode::Success,
            },
            w5::Packet::Publish(p) => Out::Publish {
                qos: p.qos as u8,
                pkid: p.pkid,
                dup: p.dup,
                topic: p.topic.to_vec(),
            },
            w5::Packet::PubAck(p) => Out::PubAck(p.pkid),
            w5::Packet::PubRec(p) => Out::PubRec(p.pkid),
            w5::Packet::PubRel(p) => Out::PubRel(p.pkid),
            w5::Packet::PubComp(p) => Out::PubComp(p.pkid),
            w5::Packet::SubAck(s) => Out::SubAck {
                pkid: s.pkid,
                codes: s.return_codes.len(),
            },
            w5::Packet::UnsubAck(u) => Out::UnsubAck {
                pkid: u.pkid,
                codes: Some(u.reasons.len()),
            },
            w5::Packet::PingResp(_) => Out::PingResp,
            w5::Packet::Disconnect(_) => Out::Disconnect,
            w5::Packet::Auth(_) => Out::Other("AUTH"),
            w5::Packet::Connect(..) => Out::Other("CONNECT"),
            w5::Packet::Subscribe(_) => Out::Other("SUBSCRIBE"),
            w5::Packet::Unsubscribe(_) => Out::Other("UNSUBSCRIBE"),
            w5::Packet::PingReq(_) => Out::Other("PINGREQ"),
        };
        Ok(Some((out, len)))
    } else {
        let packet = w4::Packet::read(buf, usize::MAX).map_err(|e| format!("v4 decode: {e:?}"))?;
        let out = match packet {
            w4::Packet::ConnAck(c) => Out::ConnAck {
                success: c.code == w4::ConnectReturnCode::Success,
            },
            w4::Packet::Publish(p) => Out::Publish {
                qos: p.qos as u8,
                pkid: p.pkid,
                dup: p.dup,
                topic: p.topic.as_bytes().to_vec(),
            },
            w4::Packet::PubAck(p) => Out::PubAck(p.pkid),
            w4::Packet::PubRec(p) => Out::PubRec(p.pkid),
            w4::Packet::PubRel(p) => Out::PubRel(p.pkid),
            w4::Packet::PubComp(p) => Out::PubComp(p.pkid),
            w4::Packet::SubAck(s) => Out::SubAck {
                pkid: s.pkid,
                codes: s.return_codes.len(),
            },
            w4::Packet::UnsubAck(u) => Out::UnsubAck {
                pkid: u.pkid,
                codes: None,
            },
            w4::Packet::PingResp => Out::PingResp,
            // No DISCONNECT from a server before MQTT 5.
            w4::Packet::Disconnect => Out::Other("DISCONNECT before MQTT 5"),
            w4::Packet::Connect(_) => Out::Other("CONNECT"),
            w4::Packet::Subscribe(_) => Out::Other("SUBSCRIBE"),
            w4::Packet::Unsubscribe(_) => Out::Other("UNSUBSCRIBE"),
            w4::Packet::PingReq => Out::Other("PINGREQ"),
        };
        Ok(Some((out, len)))
    }
}

/// One client connection: its end of the stream, the broker's task, and what the client has
/// sent so far, to check the broker's answers against.
struct Conn {
    stream: Option<DuplexStream>,
    task: JoinHandle<()>,
    /// The version of the CONNECT this connection began with (None: it began with something
    /// else, and the broker's answer is not decoded).
    version: Option<Version>,
    client_id: String,
    asked: Asked,
    /// Bytes have been sent on this connection.
    sent: bool,
    /// Raw bytes were sent after the CONNECT: they may hold packets the model does not know.
    tainted: bool,
    received: BytesMut,
    connack: Option<bool>,
    ended: bool,
    subscribes: VecDeque<(u16, usize)>,
    unsubscribes: VecDeque<(u16, usize)>,
    owed_puback: HashMap<u16, u32>,
    owed_pubrec: HashMap<u16, u32>,
    owed_pubcomp: HashMap<u16, u32>,
    pings: u32,
    /// Packet ids of the broker's QoS 1/2 publishes not yet acknowledged by this client.
    inflight: BTreeSet<u16>,
    /// Ids the broker used most recently, for acknowledgements that refer to them.
    recent: Vec<u16>,
}

/// The broker's in-flight window when the client does not ask for a smaller one.
const MAX_INFLIGHT: usize = 100;

impl Conn {
    /// Checks one packet the broker sent; `qos2_ids` are the ids of QoS 2 publishes ever sent
    /// to this client id.
    fn check(&mut self, out: Out, len: usize, qos2_ids: &mut HashSet<u16>) {
        assert!(
            !self.ended,
            "broker wrote {out:?} after ending the connection"
        );
        if let Some(max) = self.asked.max_packet {
            assert!(
                len <= max as usize,
                "broker wrote a {len}-byte {out:?} to a client with maximum packet size {max}"
            );
        }
        match &out {
            Out::ConnAck { success } => {
                assert!(self.connack.is_none(), "second CONNACK");
                self.connack = Some(*success);
                if !success {
                    self.ended = true;
                }
                return;
            }
            _ => assert!(
                self.connack == Some(true),
                "{out:?} before a successful CONNACK"
            ),
        }
        let strict = !self.tainted;
        match out {
            Out::ConnAck { .. } => unreachable!(),
            Out::Publish {
                qos,
                pkid,
                dup,
                topic,
            } => {
                let topic = String::from_utf8(topic).expect("UTF-8 topic");
                assert!(!topic.is_empty(), "PUBLISH without a topic name");
                assert!(
                    !topic.contains(['+', '#']),
                    "PUBLISH to a wildcard topic {topic:?}"
                );
                if qos > 0 {
                    assert_ne!(pkid, 0, "QoS {qos} PUBLISH with packet id 0");
                    if !self.inflight.contains(&pkid) {
                        let window = usize::from(self.asked.receive_max.unwrap_or(u16::MAX))
                            .min(MAX_INFLIGHT);
                        // Raw bytes may have acknowledged what the model still counts.
                        assert!(
                            !strict || self.inflight.len() < window,
                            "a PUBLISH beyond the in-flight window of {window}: {:?} + {pkid}",
                            self.inflight
                        );
                        self.inflight.insert(pkid);
                    } else if strict {
                        assert!(dup, "packet id {pkid} reused while in flight");
                    }
                    if qos == 2 {
                        qos2_ids.insert(pkid);
                    }
                    self.recent.push(pkid);
                }
            }
            Out::PubRel(pkid) => {
                assert!(
                    qos2_ids.contains(&pkid),
                    "PUBREL {pkid} for no QoS 2 PUBLISH sent to this client"
                );
                self.recent.push(pkid);
            }
            Out::PubAck(pkid) if strict => owe(&mut self.owed_puback, pkid, "PUBACK"),
            Out::PubRec(pkid) if strict => owe(&mut self.owed_pubrec, pkid, "PUBREC"),
            Out::PubComp(pkid) if strict => owe(&mut self.owed_pubcomp, pkid, "PUBCOMP"),
            Out::SubAck { pkid, codes } if strict => {
                let (sent, count) = self
                    .subscribes
                    .pop_front()
                    .expect("SUBACK for no SUBSCRIBE");
                assert_eq!(pkid, sent, "SUBACK id");
                assert_eq!(codes, count, "SUBACK reason codes");
            }
            Out::UnsubAck { pkid, codes } if strict => {
                let (sent, count) = self
                    .unsubscribes
                    .pop_front()
                    .expect("UNSUBACK for no UNSUBSCRIBE");
                assert_eq!(pkid, sent, "UNSUBACK id");
                if let Some(codes) = codes {
                    assert_eq!(codes, count, "UNSUBACK reason codes");
                }
            }
            Out::PingResp if strict => {
                assert!(self.pings > 0, "PINGRESP for no PINGREQ");
                self.pings -= 1;
            }
            Out::Disconnect => self.ended = true,
            Out::Other(what) => panic!("broker sent {what}"),
            _ => {}
        }
        if self.recent.len() > 64 {
            self.recent.drain(..32);
        }
    }

    /// The client acknowledged `pkid`: the broker may use it again (whatever the kind of the
    /// acknowledgement: the model forgets too soon rather than too late).
    fn acked(&mut self, pkid: u16) {
        self.inflight.remove(&pkid);
    }
}

fn owe(owed: &mut HashMap<u16, u32>, pkid: u16, what: &str) {
    let count = owed.get_mut(&pkid);
    match count {
        Some(n) if *n > 0 => *n -= 1,
        _ => panic!("{what} {pkid} for nothing the client sent"),
    }
}

/// Lets every task run until all wait (on input, or on a timer later than a millisecond: time
/// is paused and only moves when nothing else can).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Reads what is available without waiting; true at end of stream.
async fn read_available(stream: &mut DuplexStream, into: &mut BytesMut) -> bool {
    poll_fn(|cx| {
        let mut chunk = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(true),
                Poll::Ready(Ok(())) => into.extend_from_slice(buf.filled()),
                Poll::Ready(Err(_)) => return Poll::Ready(true),
                Poll::Pending => return Poll::Ready(false),
            }
        }
    })
    .await
}

struct World {
    broker: Arc<Broker>,
    slots: [Option<Conn>; SLOTS],
    finished: Vec<JoinHandle<()>>,
    qos2_ids: HashMap<String, HashSet<u16>>,
    /// `SESSION_SEQUENCE_TRACE` is set: print what is sent and received.
    trace: bool,
}

impl World {
    /// The slot's connection; a new one if it has none or the broker closed it.
    fn open(&mut self, slot: usize) -> &mut Conn {
        if self.slots[slot]
            .as_ref()
            .is_some_and(|c| c.stream.is_none())
        {
            self.close(slot);
        }
        if self.slots[slot].is_none() {
            let (client, server) = tokio::io::duplex(PIPE);
            let peer = ([127, 0, 0, 1], 40000 + slot as u16).into();
            let task = tokio::spawn(starling_broker::connection::serve(
                self.broker.clone(),
                server,
                peer,
            ));
            self.slots[slot] = Some(Conn {
                stream: Some(client),
                task,
                version: None,
                client_id: String::new(),
                asked: Asked::default(),
                sent: false,
                tainted: false,
                received: BytesMut::new(),
                connack: None,
                ended: false,
                subscribes: VecDeque::new(),
                unsubscribes: VecDeque::new(),
                owed_puback: HashMap::new(),
                owed_pubrec: HashMap::new(),
                owed_pubcomp: HashMap::new(),
                pings: 0,
                inflight: BTreeSet::new(),
                recent: Vec::new(),
            });
        }
        self.slots[slot].as_mut().expect("just opened")
    }

    async fn send(&mut self, slot: usize, bytes: &[u8]) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        conn.sent = true;
        if self.trace {
            eprintln!("slot {slot} ({}) -> {:02x?}", conn.client_id, bytes);
        }
        // Paused time: this times out only if the broker stops reading for good.
        let written = tokio::time::timeout(Duration::from_secs(60), stream.write_all(bytes)).await;
        assert!(
            written.is_ok(),
            "the broker stopped reading a connection it keeps open"
        );
        self.pump().await;
    }

    /// Runs the broker until it waits, reading and checking everything it wrote.
    async fn pump(&mut self) {
        for _ in 0..16 {
            settle().await;
            let mut more = false;
            for conn in self.slots.iter_mut().flatten() {
                let Some(stream) = conn.stream.as_mut() else {
                    continue;
                };
                let before = conn.received.len();
                let eof = read_available(stream, &mut conn.received).await;
                more |= conn.received.len() > before;
                if eof {
                    conn.stream = None;
                }
                let Some(version) = conn.version else {
                    conn.received.clear();
                    continue;
                };
                let qos2 = self.qos2_ids.entry(conn.client_id.clone()).or_default();
                loop {
                    match decode_out(&mut conn.received, version) {
                        Ok(Some((out, len))) => {
                            if self.trace {
                                eprintln!("  {} <- {out:?}", conn.client_id);
                            }
                            conn.check(out, len, qos2)
                        }
                        Ok(None) => break,
                        Err(e) => panic!("broker wrote a malformed packet: {e}"),
                    }
                }
            }
            if !more {
                return;
            }
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.slots[slot].take() {
            self.finished.push(conn.task);
        }
    }
}

fn version_of(b: u8) -> Version {
    [Version::V31, Version::V311, Version::V5, Version::V5][usize::from(b % 4)]
}

async fn run(data: &[u8]) {
    let mut config = BrokerConfig::default();
    config.sys.interval_secs = 0;
    let store = Arc::new(MemoryStore::new(config.limits.max_queued_messages));
    let broker = Broker::new(config, Auth::allow_all(), store);
    let mut world = World {
        broker: broker.clone(),
        slots: [None, None, None],
        finished: Vec::new(),
        qos2_ids: HashMap::new(),
        trace: std::env::var_os("SESSION_SEQUENCE_TRACE").is_some(),
    };
    let mut input = Input { data };
    for _ in 0..MAX_ACTIONS {
        if input.is_empty() {
            break;
        }
        let op = input.byte();
        let slot = usize::from(op >> 4) % SLOTS;
        match op % 16 {
            0 | 1 => {
                let version = version_of(input.byte());
                let (bytes, client_id, asked) = connect(&mut input, version);
                let conn = world.open(slot);
                if !conn.sent {
                    conn.version = Some(version);
                    conn.client_id = client_id;
                    conn.asked = asked;
                }
                world.send(slot, &bytes).await;
            }
            2 | 3 => {
                let version = world.open(slot).version.unwrap_or(Version::V311);
                let (bytes, qos, pkid) = publish(&mut input, version);
                let conn = world.open(slot);
                match qos {
                    1 => *conn.owed_puback.entry(pkid).or_default() += 1,
                    2 => *conn.owed_pubrec.entry(pkid).or_default() += 1,
                    _ => {}
                }
                world.send(slot, &bytes).await;
            }
            4..=7 => {
                let kind = op % 4;
                let choice = input.byte();
                let reason = input.byte();
                let conn = world.open(slot);
                let version = conn.version.unwrap_or(Version::V311);
                let pkid = if choice & 0x80 == 0 && !conn.recent.is_empty() {
                    conn.recent[conn.recent.len() - 1 - usize::from(choice) % conn.recent.len()]
                } else {
                    u16::from(choice & 0x07)
                };
                if kind != 2 {
                    conn.acked(pkid);
                } else {
                    *conn.owed_pubcomp.entry(pkid).or_default() += 1;
                }
                world.send(slot, &ack(kind, pkid, version, reason)).await;
            }
            8 => {
                let version = world.open(slot).version.unwrap_or(Version::V311);
                let (bytes, pkid, count) = subscribe(&mut input, version);
                world.open(slot).subscribes.push_back((pkid, count));
                world.send(slot, &bytes).await;
            }
            9 => {
                let version = world.open(slot).version.unwrap_or(Version::V311);
                let (bytes, pkid, count) = unsubscribe(&mut input, version);
                world.open(slot).unsubscribes.push_back((pkid, count));
                world.send(slot, &bytes).await;
            }
            10 => {
                world.open(slot).pings += 1;
                world.send(slot, &[0xC0, 0x00]).await;
            }
            11 => {
                let version = world.open(slot).version.unwrap_or(Version::V311);
                let bytes = disconnect(&mut input, version);
                world.send(slot, &bytes).await;
            }
            12 => {
                let n = usize::from(input.byte() % 32);
                let bytes = input.bytes(n).to_vec();
                world.open(slot).tainted = true;
                world.send(slot, &bytes).await;
            }
            13 => {
                world.close(slot);
                world.pump().await;
            }
            14 => {
                let secs = [1u64, 5, 11, 3600][usize::from(input.byte() % 4)];
                tokio::time::sleep(Duration::from_secs(secs)).await;
                world.pump().await;
            }
            _ => {
                // Half a packet now, the rest with the next action on this slot's stream.
                let version = world.open(slot).version.unwrap_or(Version::V311);
                let (bytes, _, _) = publish(&mut input, version);
                world.open(slot).tainted = true;
                let half = bytes.len() / 2;
                world.send(slot, &bytes[..half]).await;
            }
        }
    }
    // Every connection ends once its socket is closed, and the broker counts none open.
    for slot in 0..SLOTS {
        world.close(slot);
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    for task in &world.finished {
        assert!(
            task.is_finished(),
            "a connection outlived its closed socket"
        );
    }
    assert_eq!(
        broker.metrics.connections.get(),
        0,
        "connections counted open after all closed"
    );
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(run(data));
});

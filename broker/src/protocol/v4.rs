//! Conversion between the MQTT 3.1.1 packets of rumqttc's v4 codec and the broker's MQTT 5 model.

use super::decode_error::DecodeError;
use bytes::Bytes;
use rumqttc::mqttbytes::v4 as wire4;
use rumqttc::mqttbytes::QoS as QoS4;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, LastWill, Login,
    Packet, PingReq, PubAck, PubComp, PubRec, PubRel, Publish, RetainForwardRule, Subscribe,
    SubscribeReasonCode, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;

fn qos_in(q: QoS4) -> QoS {
    match q {
        QoS4::AtMostOnce => QoS::AtMostOnce,
        QoS4::AtLeastOnce => QoS::AtLeastOnce,
        QoS4::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_out(q: QoS) -> QoS4 {
    match q {
        QoS::AtMostOnce => QoS4::AtMostOnce,
        QoS::AtLeastOnce => QoS4::AtLeastOnce,
        QoS::ExactlyOnce => QoS4::ExactlyOnce,
    }
}

/// Converts a 3.1.1 CONNECT into the MQTT 5 model.
pub(super) fn connect_to_v5(c: wire4::Connect) -> (Connect, Option<LastWill>, Option<Login>) {
    let will = c.last_will.map(|w| LastWill {
        topic: Bytes::from(w.topic.into_bytes()),
        message: w.message,
        qos: qos_in(w.qos),
        retain: w.retain,
        properties: None,
    });
    let login = c.login.map(|l| Login {
        username: l.username,
        password: l.password,
    });
    let connect = Connect {
        keep_alive: c.keep_alive,
        client_id: c.client_id,
        clean_start: c.clean_session,
        properties: None,
    };
    (connect, will, login)
}

/// Converts a packet a 3.1.1 client sent into the MQTT 5 model.
pub(super) fn incoming_to_v5(packet: wire4::Packet) -> Result<Packet, DecodeError> {
    Ok(match packet {
        wire4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos_in(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic.into_bytes()),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        wire4::Packet::PubAck(a) => Packet::PubAck(PubAck::new(a.pkid, None)),
        wire4::Packet::PubRec(a) => Packet::PubRec(PubRec::new(a.pkid, None)),
        wire4::Packet::PubRel(a) => Packet::PubRel(PubRel::new(a.pkid, None)),
        wire4::Packet::PubComp(a) => Packet::PubComp(PubComp::new(a.pkid, None)),
        wire4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Filter {
                    path: f.path,
                    qos: qos_in(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        wire4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        wire4::Packet::PingReq => Packet::PingReq(PingReq),
        wire4::Packet::Disconnect => {
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        }
        other => {
            return Err(DecodeError::Protocol(format!(
                "unexpected packet from a client: {other:?}"
            )))
        }
    })
}

fn connack_code(code: ConnectReturnCode) -> wire4::ConnectReturnCode {
    use wire4::ConnectReturnCode as C4;
    match code {
        ConnectReturnCode::Success => C4::Success,
        ConnectReturnCode::RefusedProtocolVersion
        | ConnectReturnCode::UnsupportedProtocolVersion => C4::RefusedProtocolVersion,
        ConnectReturnCode::BadClientId | ConnectReturnCode::ClientIdentifierNotValid => {
            C4::BadClientId
        }
        ConnectReturnCode::BadUserNamePassword => C4::BadUserNamePassword,
        ConnectReturnCode::NotAuthorized | ConnectReturnCode::Banned => C4::NotAuthorized,
        _ => C4::ServiceUnavailable,
    }
}

/// Converts a packet for a 3.1.1 client; `None` when it has no 3.1.1 form (DISCONNECT, AUTH).
pub(super) fn outgoing_to_v4(packet: &Packet) -> Option<wire4::Packet> {
    Some(match packet {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            ..
        }) => wire4::Packet::ConnAck(wire4::ConnAck::new(connack_code(*code), *session_present)),
        Packet::Publish(p) => {
            // A 3.1.1 topic must be UTF-8; the broker only routes validated topics.
            let topic = String::from_utf8(p.topic.to_vec()).ok()?;
            wire4::Packet::Publish(wire4::Publish {
                dup: p.dup,
                qos: qos_out(p.qos),
                retain: p.retain,
                topic,
                pkid: p.pkid,
                payload: p.payload.clone(),
            })
        }
        // 3.1.1 has no negative acknowledgements: a refused message is acknowledged, not routed.
        Packet::PubAck(a) => wire4::Packet::PubAck(wire4::PubAck::new(a.pkid)),
        Packet::PubRec(a) => wire4::Packet::PubRec(wire4::PubRec::new(a.pkid)),
        Packet::PubRel(a) => wire4::Packet::PubRel(wire4::PubRel::new(a.pkid)),
        Packet::PubComp(a) => wire4::Packet::PubComp(wire4::PubComp::new(a.pkid)),
        Packet::SubAck(s) => wire4::Packet::SubAck(wire4::SubAck::new(
            s.pkid,
            s.return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => {
                        wire4::SubscribeReasonCode::Success(qos_out(*q))
                    }
                    _ => wire4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::UnsubAck(u) => wire4::Packet::UnsubAck(wire4::UnsubAck::new(u.pkid)),
        Packet::PingResp(_) => wire4::Packet::PingResp,
        _ => return None,
    })
}

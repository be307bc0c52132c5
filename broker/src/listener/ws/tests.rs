//! Tests of the WebSocket transport: the upgrade, subprotocol negotiation and framing.

use super::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;

const MAX: usize = 1024;

/// A safety net so a broken implementation fails instead of hanging; it
/// is never used to order events.
const GUARD: Duration = Duration::from_secs(10);

type Client = WebSocketStream<TcpStream>;
type Server = JoinHandle<Result<WsStream<TcpStream>, ListenerError>>;

/// Starts `accept` on a loopback listener and connects a tungstenite
/// client offering `protocol` (if any).
async fn connect(
    protocol: Option<&'static str>,
) -> (
    Result<(Client, http::Response<Option<Vec<u8>>>), WsError>,
    Server,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server: Server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        accept(tcp, MAX).await
    });
    let mut request = format!("ws://{addr}/mqtt")
        .into_client_request()
        .expect("request");
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let client = tokio::time::timeout(GUARD, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("client handshake timed out");
    (client, server)
}

/// A connected client and server stream, negotiated with `mqtt`.
async fn pair() -> (Client, WsStream<TcpStream>) {
    let (client, server) = connect(Some("mqtt")).await;
    let (client, _) = client.expect("client handshake");
    let server = server
        .await
        .expect("server task")
        .expect("server handshake");
    (client, server)
}

async fn next_message(client: &mut Client) -> Option<Message> {
    tokio::time::timeout(GUARD, client.next())
        .await
        .expect("client read timed out")
        .map(|m| m.expect("client read"))
}

async fn read_some(server: &mut WsStream<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    tokio::time::timeout(GUARD, server.read(buf))
        .await
        .expect("server read timed out")
}

#[test]
fn ws_stream_is_send_and_unpin() {
    fn check<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>() {}
    check::<WsStream<TcpStream>>();
}

#[tokio::test]
async fn answers_with_mqtt_subprotocol() {
    let (client, _server) = connect(Some("mqtt")).await;
    let (_, response) = client.expect("client handshake");
    assert_eq!(
        response.headers().get(SEC_WEBSOCKET_PROTOCOL),
        Some(&HeaderValue::from_static("mqtt"))
    );
}

#[tokio::test]
async fn answers_with_the_offered_legacy_subprotocol() {
    let (client, _server) = connect(Some("foo, mqttv3.1")).await;
    let (_, response) = client.expect("client handshake");
    assert_eq!(
        response.headers().get(SEC_WEBSOCKET_PROTOCOL),
        Some(&HeaderValue::from_static("mqttv3.1"))
    );
}

#[tokio::test]
async fn no_subprotocol_offered_is_accepted_without_header() {
    let (client, server) = connect(None).await;
    let (_, response) = client.expect("client handshake");
    assert!(response.headers().get(SEC_WEBSOCKET_PROTOCOL).is_none());
    server
        .await
        .expect("server task")
        .expect("server handshake");
}

#[tokio::test]
async fn unsupported_subprotocol_is_refused() {
    let (client, server) = connect(Some("foo")).await;
    match client {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST)
        }
        Err(other) => panic!("unexpected client error: {other}"),
        Ok(_) => panic!("handshake offering only `foo` was accepted"),
    }
    match server.await.expect("server task") {
        Err(ListenerError::WsRejected { status, reason }) => {
            assert_eq!(status, 400);
            assert!(reason.contains("mqtt"), "{reason}");
        }
        Err(other) => panic!("unexpected server error: {other}"),
        Ok(_) => panic!("server accepted a handshake offering only `foo`"),
    }
}

#[tokio::test]
async fn buffered_writes_are_sent_as_one_binary_message_on_flush() {
    let (mut client, mut server) = pair().await;
    server.write_all(&[0x30, 0x03]).await.expect("write 1");
    server
        .write_all(&[0x00, 0x01, b'a'])
        .await
        .expect("write 2");
    server.flush().await.expect("flush");
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0x30, 0x03, 0x00, 0x01, b'a']))
    );
    server.write_all(&[0xd0, 0x00]).await.expect("write 3");
    server.flush().await.expect("flush");
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0xd0, 0x00]))
    );
}

#[tokio::test]
async fn large_writes_are_split_into_bounded_messages() {
    let (mut client, mut server) = pair().await;
    let data: Vec<u8> = (0..(2 * MAX + 500)).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn(async move {
        server.write_all(&data).await.expect("write");
        server.flush().await.expect("flush");
        (server, data)
    });
    let mut received = Vec::new();
    while received.len() < 2 * MAX + 500 {
        match next_message(&mut client).await {
            Some(Message::Binary(payload)) => {
                assert!(
                    !payload.is_empty() && payload.len() <= MAX,
                    "{}",
                    payload.len()
                );
                received.extend_from_slice(&payload);
            }
            other => panic!("unexpected message {other:?}"),
        }
    }
    let (_server, data) = writer.await.expect("writer task");
    assert_eq!(received, data);
}

#[tokio::test]
async fn reads_reassemble_packets_across_and_within_frames() {
    let (mut client, mut server) = pair().await;
    // PINGREQ split over two frames, then PUBLISH + PINGREQ in one frame.
    let frames: [&[u8]; 3] = [
        &[0xc0],
        &[0x00],
        &[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i', 0xc0, 0x00],
    ];
    for frame in frames {
        client
            .send(Message::binary(frame.to_vec()))
            .await
            .expect("client send");
    }
    let expected: Vec<u8> = frames.concat();
    let mut received = vec![0u8; expected.len()];
    tokio::time::timeout(GUARD, server.read_exact(&mut received))
        .await
        .expect("server read timed out")
        .expect("server read");
    assert_eq!(received, expected);
}

#[tokio::test]
async fn small_read_buffers_drain_a_message_in_order() {
    let (mut client, mut server) = pair().await;
    client
        .send(Message::binary(vec![1, 2, 3, 4, 5]))
        .await
        .expect("client send");
    let mut byte = [0u8; 2];
    let mut received = Vec::new();
    while received.len() < 5 {
        let n = read_some(&mut server, &mut byte)
            .await
            .expect("server read");
        assert!(n > 0, "unexpected EOF");
        received.extend_from_slice(&byte[..n]);
    }
    assert_eq!(received, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn text_message_is_a_read_error() {
    let (mut client, mut server) = pair().await;
    client
        .send(Message::text("CONNECT"))
        .await
        .expect("client send");
    let mut buf = [0u8; 16];
    let err = read_some(&mut server, &mut buf)
        .await
        .expect_err("text message must fail the read");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // And the stream stays failed rather than resuming.
    client
        .send(Message::binary(vec![0xc0, 0x00]))
        .await
        .expect("client send");
    let err = read_some(&mut server, &mut buf)
        .await
        .expect_err("still failed");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn oversized_message_is_a_read_error() {
    let (mut client, mut server) = pair().await;
    client
        .send(Message::binary(vec![0u8; MAX + 1]))
        .await
        .expect("client send");
    let mut buf = [0u8; 16];
    let err = read_some(&mut server, &mut buf)
        .await
        .expect_err("oversized message must fail the read");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn close_frame_reads_as_eof_and_is_answered() {
    let (mut client, mut server) = pair().await;
    client
        .send(Message::binary(vec![0xe0, 0x00]))
        .await
        .expect("client send");
    client.close(None).await.expect("client close");
    let mut buf = [0u8; 16];
    assert_eq!(read_some(&mut server, &mut buf).await.expect("read"), 2);
    assert_eq!(&buf[..2], &[0xe0, 0x00]);
    assert_eq!(read_some(&mut server, &mut buf).await.expect("read"), 0);
    assert_eq!(read_some(&mut server, &mut buf).await.expect("read"), 0);
    // The server stream is still alive, so the client can only see a
    // close frame if reading the server side answered the client's one.
    assert!(matches!(
        next_message(&mut client).await,
        Some(Message::Close(_))
    ));
    // A client waits for the server to end the TCP connection.
    drop(server);
    assert_eq!(next_message(&mut client).await, None);
}

#[tokio::test]
async fn ping_is_answered_while_reading() {
    let (mut client, mut server) = pair().await;
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.expect("server read");
        buf
    });
    client
        .send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .expect("client ping");
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::Pong(Bytes::from_static(b"hi")))
    );
    client
        .send(Message::binary(vec![0xc0, 0x00]))
        .await
        .expect("client send");
    assert_eq!(reader.await.expect("reader task"), [0xc0, 0x00]);
}

#[tokio::test]
async fn shutdown_sends_pending_data_then_close_frame() {
    let (mut client, mut server) = pair().await;
    server.write_all(&[0xe0, 0x00]).await.expect("write");
    tokio::time::timeout(GUARD, server.shutdown())
        .await
        .expect("shutdown timed out")
        .expect("shutdown");
    assert_eq!(
        next_message(&mut client).await,
        Some(Message::binary(vec![0xe0, 0x00]))
    );
    assert!(matches!(
        next_message(&mut client).await,
        Some(Message::Close(_))
    ));
}

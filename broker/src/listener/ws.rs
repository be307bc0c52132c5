//! WebSocket listener support (subprotocol `mqtt`).
//!
//! [`accept`] performs the server side of the WebSocket opening handshake on
//! an already accepted stream (plain TCP or TLS) and returns a [`WsStream`],
//! which carries the MQTT byte stream in binary WebSocket messages and can be
//! handed to the connection code like any other socket.

use super::ListenerError;
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The WebSocket subprotocols we speak, as registered for MQTT: `mqtt` (MQTT
/// 3.1.1 and 5.0) and the legacy `mqttv3.1`.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the server side WebSocket handshake on an accepted stream and
/// returns the MQTT byte stream it carries.
///
/// Subprotocol negotiation: if the client offers `mqtt` or `mqttv3.1` in
/// `Sec-WebSocket-Protocol`, the first of those it lists is echoed back; if it
/// offers subprotocols but none of these, the handshake is refused with
/// `400 Bad Request` and [`ListenerError::WsRejected`]; if it offers none at
/// all, the handshake is accepted without the header (as mosquitto does).
///
/// `max_message_size` bounds the size of a received WebSocket message and
/// frame, and is also the largest binary message [`WsStream`] sends. It must be
/// at least 1.
///
/// This future waits for the client's HTTP request without a deadline; wrap
/// it in a timeout.
pub async fn accept<S>(stream: S, max_message_size: usize) -> Result<WsStream<S>, ListenerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size));
    let inner = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        negotiate_subprotocol,
        Some(config),
    )
    .await
    .map_err(|err| match err {
        WsError::Http(response) => ListenerError::WsRejected {
            status: response.status().as_u16(),
            reason: response
                .body()
                .as_deref()
                .map(|body| String::from_utf8_lossy(body).into_owned())
                .unwrap_or_default(),
        },
        other => ListenerError::WsHandshake(Box::new(other)),
    })?;
    Ok(WsStream::new(inner, max_message_size))
}

/// The handshake callback: picks the subprotocol to answer with.
#[allow(clippy::result_large_err)] // the signature is fixed by tungstenite
fn negotiate_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let mut offered_any = false;
    for value in request.headers().get_all(SEC_WEBSOCKET_PROTOCOL) {
        // A value that is not visible ASCII cannot name one of ours.
        let Ok(value) = value.to_str() else {
            offered_any = true;
            continue;
        };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            offered_any = true;
            if SUBPROTOCOLS.contains(&token) {
                if let Ok(chosen) = HeaderValue::from_str(token) {
                    response
                        .headers_mut()
                        .insert(SEC_WEBSOCKET_PROTOCOL, chosen);
                    return Ok(response);
                }
            }
        }
    }
    if !offered_any {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some(
        "no supported WebSocket subprotocol offered (expected mqtt or mqttv3.1)".to_string(),
    ));
    *refusal.status_mut() = StatusCode::BAD_REQUEST;
    Err(refusal)
}

/// Where the read side of a [`WsStream`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Delivering data.
    Open,
    /// The peer sent a close frame; our reply may still need a push.
    Closing,
    /// The stream has ended: reads return 0 bytes.
    Eof,
    /// The peer violated the MQTT-over-WebSocket framing; reads fail.
    Failed,
}

/// An MQTT byte stream carried in binary WebSocket frames: implements tokio
/// [`AsyncRead`] + [`AsyncWrite`] (and is `Unpin`, and `Send` when `S` is).
///
/// Reads deliver the payloads of binary messages in order, regardless of how
/// MQTT packets are split across messages. A text message is a protocol
/// violation and makes the read fail with [`io::ErrorKind::InvalidData`];
/// pings are answered; a close frame (or the end of the stream) reads as end
/// of file. The reply to a close frame is sent while reading if the socket
/// accepts it at once, otherwise by a later flush or shutdown.
///
/// Writes are buffered and sent as one binary message on flush (a message is
/// also sent early when the buffer reaches the maximum message size), so
/// flush after each batch of packets. Shutdown sends a close frame.
pub struct WsStream<S> {
    /// The WebSocket connection.
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message received.
    read_buf: Bytes,
    /// Where the read side is.
    read_state: ReadState,
    /// Bytes written but not yet sent as a message.
    write_buf: BytesMut,
    /// Largest binary message we send.
    max_write_message: usize,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("buffered_read", &self.read_buf.len())
            .field("read_state", &self.read_state)
            .field("buffered_write", &self.write_buf.len())
            .finish_non_exhaustive()
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(inner: WebSocketStream<S>, max_message_size: usize) -> Self {
        WsStream {
            inner,
            read_buf: Bytes::new(),
            read_state: ReadState::Open,
            write_buf: BytesMut::new(),
            max_write_message: max_message_size.max(1),
        }
    }

    /// Hands the buffered written bytes to the WebSocket as one binary
    /// message (without flushing it to the socket).
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        let payload = self.write_buf.split().freeze();
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(payload))
            .map_err(to_io)?;
        Poll::Ready(Ok(()))
    }
}

/// Maps a WebSocket error to the I/O error a byte stream would report.
fn to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, err)
        }
        WsError::Capacity(_) | WsError::Protocol(_) | WsError::Utf8 | WsError::AttackAttempt => {
            io::Error::new(io::ErrorKind::InvalidData, err)
        }
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.read_buf.is_empty() {
                let n = buf.remaining().min(this.read_buf.len());
                buf.put_slice(&this.read_buf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match this.read_state {
                ReadState::Open => {}
                ReadState::Closing => {
                    // Give tungstenite one chance to send its reply to the
                    // close frame, but do not wait on the peer for it: the
                    // stream has ended either way.
                    let _ = Pin::new(&mut this.inner).poll_next(cx);
                    this.read_state = ReadState::Eof;
                    return Poll::Ready(Ok(()));
                }
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "WebSocket stream already failed a protocol check",
                    )))
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => this.read_state = ReadState::Eof,
                Some(Err(err)) => {
                    this.read_state = ReadState::Failed;
                    return Poll::Ready(Err(to_io(err)));
                }
                Some(Ok(Message::Binary(payload))) => this.read_buf = payload,
                Some(Ok(Message::Text(_))) => {
                    this.read_state = ReadState::Failed;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message received; MQTT must be sent in binary messages",
                    )));
                }
                Some(Ok(Message::Close(_))) => this.read_state = ReadState::Closing,
                // Pongs are queued by tungstenite itself; nothing to deliver.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_buf.len() >= this.max_write_message {
            ready!(this.poll_send_buffered(cx))?;
        }
        let room = this.max_write_message - this.write_buf.len();
        let n = room.min(buf.len());
        this.write_buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        match ready!(Pin::new(&mut this.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(err) => Poll::Ready(Err(to_io(err))),
        }
    }
}

#[cfg(test)]
mod tests;

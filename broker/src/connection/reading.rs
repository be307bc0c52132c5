//! Reading a client's bytes without a buffer of its own while it is idle: one read per wake-up
//! into a scratch buffer of the worker thread, keeping only the bytes that arrived.
//!
//! A device sends one small packet now and then. Reading it into a buffer that lives in the
//! connection would cost either memory on every idle connection or a second read for packets
//! larger than the buffer; the thread's scratch buffer takes the whole packet in one read and
//! the connection allocates only what it received. A connection whose read filled the scratch
//! buffer is in a burst: it then reads straight into a large buffer of its own until drained.

use bytes::BytesMut;
use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Bytes one read takes at most through the thread's scratch buffer.
pub(super) const SCRATCH_LEN: usize = 16 * 1024;

/// Room a connection in a burst keeps free for its next read.
const BURST_ROOM: usize = 16 * 1024;

thread_local! {
    /// The worker thread's scratch buffer: used only within one poll, never across an await.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How a connection reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadMode {
    /// Through the thread's scratch buffer; the connection keeps only what arrived.
    Scratch,
    /// Straight into the connection's own buffer, kept with [`BURST_ROOM`] free.
    Burst,
}

impl ReadMode {
    /// The mode after a read of `n` bytes in this mode: a read that filled its room means more
    /// is waiting.
    pub(super) fn after(self, n: usize, room: usize) -> ReadMode {
        if n == room {
            ReadMode::Burst
        } else {
            ReadMode::Scratch
        }
    }
}

/// Makes `buf` ready for a read in `mode` and returns how many bytes the read may take: in
/// scratch mode an empty buffer gives its memory back; in a burst it keeps room for a large read.
pub(super) fn prepare(buf: &mut BytesMut, mode: ReadMode) -> usize {
    match mode {
        ReadMode::Scratch => {
            if buf.is_empty() && buf.capacity() > 0 {
                *buf = BytesMut::new();
            }
            SCRATCH_LEN
        }
        ReadMode::Burst => {
            if buf.capacity() - buf.len() < BURST_ROOM {
                buf.reserve(BURST_ROOM);
            }
            buf.capacity() - buf.len()
        }
    }
}

/// Reads what is available and appends it to `buf`. Cancel-safe: bytes are moved only once
/// the read has completed.
pub(super) async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    mode: ReadMode,
) -> std::io::Result<usize> {
    match mode {
        ReadMode::Burst => stream.read_buf(buf).await,
        ReadMode::Scratch => {
            poll_fn(|cx| read_through_scratch(Pin::new(&mut *stream), cx, buf)).await
        }
    }
}

/// One poll of a read through the thread's scratch buffer.
fn read_through_scratch<S: AsyncRead>(
    stream: Pin<&mut S>,
    cx: &mut std::task::Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < SCRATCH_LEN {
                scratch.resize(SCRATCH_LEN, 0);
            }
            poll_into(stream, cx, &mut scratch[..], buf)
        }
        // Only if a stream's own read polled another connection's read on this thread, which
        // none does: a small buffer on the stack serves.
        Err(_) => poll_into(stream, cx, &mut [0u8; 512], buf),
    })
}

fn poll_into<S: AsyncRead>(
    stream: Pin<&mut S>,
    cx: &mut std::task::Context<'_>,
    space: &mut [u8],
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    let mut read = ReadBuf::new(space);
    match stream.poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_small_packet_arrives_in_one_read_and_the_buffer_holds_only_it() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let packet = vec![0x30u8; 300];
        client.write_all(&packet).await.unwrap();
        let mut buf = BytesMut::new();
        let room = prepare(&mut buf, ReadMode::Scratch);
        let n = read_some(&mut server, &mut buf, ReadMode::Scratch)
            .await
            .unwrap();
        assert_eq!(n, 300);
        assert_eq!(&buf[..], &packet[..]);
        assert!(buf.capacity() < 1024, "kept {} bytes", buf.capacity());
        assert_eq!(ReadMode::Scratch.after(n, room), ReadMode::Scratch);
    }

    #[tokio::test]
    async fn a_read_that_fills_the_scratch_buffer_turns_to_a_burst_and_back() {
        let (mut client, mut server) = tokio::io::duplex(4 * SCRATCH_LEN);
        let sent: Vec<u8> = (0..3 * SCRATCH_LEN).map(|i| i as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let mut mode = ReadMode::Scratch;
        let mut modes = Vec::new();
        loop {
            let room = prepare(&mut buf, mode);
            let n = read_some(&mut server, &mut buf, mode).await.unwrap();
            if n == 0 {
                break;
            }
            modes.push(mode);
            mode = mode.after(n, room);
        }
        assert_eq!(&buf[..], &sent[..]);
        assert_eq!(modes[0], ReadMode::Scratch);
        assert_eq!(modes[1], ReadMode::Burst);
        // Emptied, the buffer is given back before the next read through the scratch buffer.
        buf.clear();
        prepare(&mut buf, ReadMode::Scratch);
        assert_eq!(buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_pending_read_takes_nothing() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let mut buf = BytesMut::from(&b"partial"[..]);
        let read = futures_util::FutureExt::now_or_never(read_some(
            &mut server,
            &mut buf,
            ReadMode::Scratch,
        ));
        assert!(read.is_none(), "a read completed with nothing sent");
        assert_eq!(&buf[..], b"partial");
    }
}

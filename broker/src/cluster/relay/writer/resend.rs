//! Writing again what Redis may not hold: a batch whose outcome is unknown (the copy sent again
//! marks its inbox appends as possibly delivered twice; a batch stranded on a connection that no
//! longer answers is given up once Redis answers on a new one), and, once Redis lost writes it
//! had confirmed, the inbox entries the readers had not reported read.

use super::super::keys::Keys;
use super::super::ClusterLink;
use super::packs::inbox_append_holding;
use crate::cluster::unread::{Unread, KEEP_BYTES};
use std::time::Duration;
use tokio::sync::watch;

/// How long the writer still waits for its batch's answer once Redis answered the health check
/// on a new connection: an answer that does not come by then never will (the connection leads
/// to a Redis that is gone), and the batch is written again on a new connection. A Redis that
/// was only stalled answers the old connection's batch as soon as it runs again.
pub(super) const STRANDED_GRACE: Duration = Duration::from_secs(2);
/// Field of an inbox entry written again after a write whose outcome was unknown (the
/// connection broke, or hung, before Redis answered): Redis may have applied the first write
/// too, so what it relays may have been delivered already, and it is delivered with DUP.
pub(in crate::cluster) const FIELD_RESENT: &str = "d";
/// Appends to `again` a copy of `sent` to send again after its outcome was unknown: every inbox
/// append marked [`FIELD_RESENT`], every reply ignored (what the first attempt answered is not
/// known either).
fn append_marked_resent(again: &mut redis::Pipeline, sent: &redis::Pipeline, keys: &Keys) {
    let inbox_prefix = keys.inbox("");
    for command in sent.cmd_iter() {
        let mut args = command.args_iter();
        let is_xadd = matches!(args.next(), Some(redis::Arg::Simple(name)) if name.eq_ignore_ascii_case(b"XADD"));
        let to_inbox = matches!(args.next(), Some(redis::Arg::Simple(key)) if key.starts_with(inbox_prefix.as_bytes()));
        let mut command = command.clone();
        if is_xadd && to_inbox {
            command.arg(FIELD_RESENT).arg("1");
        }
        again.add_command(command).ignore();
    }
}
/// When Redis lost writes since `lost_writes` was last seen (see `ClusterLink::lost_writes`):
/// appends to `pipe` again, marked [`FIELD_RESENT`], every inbox entry in `unread` (which it
/// empties), replies ignored; returns how many messages they hold.
///
/// A reader may have delivered some of them and not reported it yet: those are delivered twice,
/// the second time with DUP. Entries whose copy did not fit in [`KEEP_BYTES`] cannot be
/// appended again, and are logged as lost.
pub(super) fn append_unread_again(
    pipe: &mut redis::Pipeline,
    link: &ClusterLink,
    unread: &mut Unread,
    lost_writes: &mut watch::Receiver<u64>,
) -> usize {
    if !lost_writes.has_changed().unwrap_or(false) {
        return 0;
    }
    lost_writes.borrow_and_update();
    let mut again = 0;
    let mut without_copy = 0;
    for node in unread.take_all() {
        for (fields, messages) in &node.copies {
            let xadd = inbox_append_holding(pipe, &link.keys, &node.node, *messages);
            for (name, value) in fields {
                xadd.arg(*name).arg(value.as_slice());
            }
            xadd.arg(FIELD_RESENT).arg("1").ignore();
            again += messages;
        }
        without_copy += node.without_copy;
    }
    if again > 0 {
        tracing::warn!(
            messages = again,
            "redis may have lost relayed messages it had confirmed: appending again those the readers had not reported read (delivered with DUP)"
        );
    }
    if without_copy > 0 {
        tracing::error!(
            messages = without_copy,
            kept_bytes = KEEP_BYTES,
            "relayed messages redis may have lost cannot be appended again: their readers were so far behind that no copy was kept"
        );
    }
    again
}

/// What to send again after a write whose outcome is unknown: first, if Redis lost writes
/// meanwhile, the unread entries (see [`append_unread_again`]), then `sending` marked resent.
pub(super) fn send_again(
    sending: &redis::Pipeline,
    link: &ClusterLink,
    unread: &mut Unread,
    lost_writes: &mut watch::Receiver<u64>,
) -> redis::Pipeline {
    let mut again = redis::pipe();
    append_unread_again(&mut again, link, unread, lost_writes);
    append_marked_resent(&mut again, sending, &link.keys);
    again
}

/// Resolves [`STRANDED_GRACE`] after the health check next answered on a new connection (never,
/// once the link is gone).
pub(super) async fn stranded(reconnected: &mut watch::Receiver<u64>) {
    if reconnected.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(STRANDED_GRACE).await;
}

#[cfg(test)]
mod tests {
    use super::super::packs::inbox_append;
    use super::*;

    #[test]
    fn a_batch_sent_again_marks_its_inbox_appends_and_nothing_else() {
        let keys = Keys {
            prefix: "starling:".to_string(),
        };
        let mut pipe = redis::pipe();
        inbox_append(&mut pipe, &keys, "node-b")
            .arg("b")
            .arg("packed");
        pipe.cmd("XADD")
            .arg("other-stream")
            .arg("*")
            .arg("x")
            .arg("1")
            .ignore();
        pipe.cmd("HSET")
            .arg(keys.journal("node-a"))
            .arg("f")
            .arg("v")
            .ignore();
        pipe.cmd("GET").arg(keys.inbox_read("node-b"));
        let mut again = redis::pipe();
        append_marked_resent(&mut again, &pipe, &keys);
        let args: Vec<Vec<Vec<u8>>> = again
            .cmd_iter()
            .map(|c| {
                c.args_iter()
                    .filter_map(|a| match a {
                        redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        assert_eq!(args.len(), 4);
        let tail = |i: usize| args[i][args[i].len() - 2..].to_vec();
        assert_eq!(tail(0), [b"d".to_vec(), b"1".to_vec()], "the inbox append");
        assert_eq!(tail(1), [b"x".to_vec(), b"1".to_vec()], "another stream");
        assert_eq!(tail(2), [b"f".to_vec(), b"v".to_vec()], "not an append");
        assert_eq!(args[3].len(), 2, "the GET is unchanged");
    }
}

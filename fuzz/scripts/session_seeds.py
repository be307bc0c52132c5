#!/usr/bin/env python3
"""Writes the seed programs of the `session_sequence` fuzz target into seeds/session_sequence/.

The byte format is the one `fuzz_targets/session_sequence.rs` reads: an opcode byte (low four
bits: the action; high four bits modulo 3: the client slot) and its parameter bytes. Run from
the fuzz/ directory: `python3 scripts/session_seeds.py`.
"""

import os

V31, V311, V5 = 0, 1, 2
IDS = {"a": 0, "b": 1, "c": 2, "": 3}
TOPICS = ["t", "t/a", "t/b/c", "$SYS/x", "$share/g/t", "s/1", "", "a/+", "#", "t/a/"]
FILTERS = ["#", "t", "t/+", "t/#", "+/+", "$SYS/#", "$share/g/t/#", "$share/g/#", "$share/h/t",
           "t/#/x", "", "+", "s/1", "$share/g", "t/a", "$share//t"]
KEEP_ALIVE = {0: 0, 1: 1, 30: 2, 65535: 3}


class Program:
    def __init__(self):
        self.out = bytearray()
        self.version = {}

    def op(self, code, slot):
        self.out.append((slot << 4) | code)

    def connect(self, slot, version, client_id, clean=True, will=None, keep_alive=30,
                props=0, will_props=0):
        """will: (topic, qos, retain) or None; props/will_props: the v5 property bytes."""
        self.op(0, slot)
        self.out.append(version)
        flags = (1 if clean else 0)
        if will:
            topic, qos, retain = will
            flags |= 2 | (qos << 2) | (0x10 if retain else 0)
        self.out += bytes([flags, IDS[client_id], KEEP_ALIVE[keep_alive]])
        if version == V5:
            self.out.append(props)
        if will:
            if version == V5:
                self.out.append(will_props)
            self.out.append(TOPICS.index(will[0]))
        self.version.setdefault(slot, version)

    def publish(self, slot, topic, qos, pkid=1, retain=False, dup=False, payload=3, props=0,
                half=False):
        self.op(15 if half else 2, slot)
        self.out += bytes([qos | (4 if retain else 0) | (8 if dup else 0), pkid,
                           TOPICS.index(topic), payload])
        if self.version.get(slot) == V5:
            self.out.append(props)

    def ack(self, slot, kind, recent=None, pkid=None, reason=0):
        """kind: 0 PUBACK, 1 PUBREC, 2 PUBREL, 3 PUBCOMP; recent=k: the k-th most recent id
        the broker used on this connection; pkid: an id 0..7."""
        self.op(4 + kind, slot)
        choice = recent if recent is not None else 0x80 | pkid
        self.out += bytes([choice, reason])

    def subscribe(self, slot, filters, pkid=1, props=0):
        """filters: [(filter, options)]"""
        self.op(8, slot)
        self.out += bytes([pkid, len(filters) - 1])
        if self.version.get(slot) == V5:
            self.out.append(props)
        for f, options in filters:
            self.out += bytes([FILTERS.index(f), options])

    def unsubscribe(self, slot, filters, pkid=1):
        self.op(9, slot)
        self.out += bytes([pkid, len(filters) - 1])
        self.out += bytes(FILTERS.index(f) for f in filters)

    def ping(self, slot):
        self.op(10, slot)

    def disconnect(self, slot, p=0):
        self.op(11, slot)
        if self.version.get(slot) == V5:
            self.out.append(p)

    def garbage(self, slot, data):
        self.op(12, slot)
        self.out.append(len(data))
        self.out += data

    def close(self, slot):
        self.op(13, slot)
        self.version.pop(slot, None)

    def tick(self, index):
        """index: 0 → 1 s, 1 → 5 s, 2 → 11 s, 3 → 1 h."""
        self.op(14, 0)
        self.out.append(index)


def seeds():
    # Delivery at every QoS between two 3.1.1 clients, acknowledged.
    p = Program()
    p.connect(0, V311, "a")
    p.subscribe(0, [("t/#", 2), ("s/1", 1)], pkid=1)
    p.connect(1, V311, "b")
    p.publish(1, "t/a", 0)
    p.publish(1, "t/a", 1, pkid=2)
    p.publish(1, "t/b/c", 2, pkid=3)
    p.ack(1, 2, pkid=3)
    p.ack(0, 0, recent=1)
    p.ack(0, 1, recent=0)
    p.ack(0, 3, recent=0)
    p.unsubscribe(0, ["t/#"], pkid=4)
    p.ping(0)
    p.disconnect(0)
    p.disconnect(1)
    yield "v311_delivery", p

    # A persistent v5 session: offline queueing, resumption, acknowledgements out of order.
    p = Program()
    p.connect(0, V5, "a", clean=True, props=0x02)  # session expiry 10 s
    p.subscribe(0, [("#", 2), ("t/+", 1)], pkid=5)
    p.close(0)
    p.connect(1, V5, "b")
    p.publish(1, "t/a", 1, pkid=1)
    p.publish(1, "t", 2, pkid=2)
    p.publish(1, "s/1", 2, pkid=3)
    p.ack(1, 2, pkid=3)
    p.ack(1, 2, pkid=2)
    p.connect(0, V5, "a", clean=False, props=0x02)
    p.ack(0, 1, recent=1)
    p.ack(0, 0, recent=2)
    p.ack(0, 3, recent=0)
    p.ack(0, 1, recent=0)
    p.ack(0, 3, pkid=7)
    p.disconnect(0, p=2)
    yield "v5_persistent_session", p

    # Session takeover across versions, then a third client with the same id.
    p = Program()
    p.connect(0, V5, "a", clean=False, props=0x03)
    p.subscribe(0, [("t", 1)], pkid=1)
    p.connect(1, V311, "a", clean=False)
    p.connect(2, V31, "b")
    p.publish(2, "t", 1, pkid=9)
    p.ack(1, 0, recent=0)
    p.connect(2, V5, "a")  # a second CONNECT on a connection: a protocol violation
    yield "takeover", p

    # Shared subscriptions between two clients, a third publishing.
    p = Program()
    p.connect(0, V5, "a")
    p.connect(1, V311, "b")
    p.subscribe(0, [("$share/g/t/#", 1)], pkid=1)
    p.subscribe(1, [("$share/g/t/#", 2), ("$share/h/t", 0)], pkid=2)
    p.connect(2, V5, "c")
    for i in range(1, 6):
        p.publish(2, "t" if i % 2 else "t/a", i % 3, pkid=i)
    p.ack(0, 0, recent=0)
    p.ack(1, 1, recent=0)
    p.close(0)
    p.publish(2, "t", 1, pkid=7)
    yield "shared", p

    # A delayed will: the client's socket closes, time passes.
    p = Program()
    p.connect(2, V5, "c")
    p.subscribe(2, [("t/#", 1), ("t", 2)], pkid=3)
    p.connect(0, V5, "a", will=("t/a", 1, True), props=0x02, will_props=0x06)
    p.connect(1, V311, "b", will=("t", 2, False))
    p.close(0)
    p.close(1)
    p.tick(2)
    p.ack(2, 0, recent=0)
    p.ack(2, 1, recent=1)
    yield "wills", p

    # Topic aliases, message expiry, retained messages and then a subscription to them.
    p = Program()
    p.connect(0, V5, "a", props=0x40)
    p.publish(0, "t/a", 1, pkid=1, retain=True, props=0x01 | 0x08 | 0x10)
    p.publish(0, "t/a", 0, props=0x01 | 0x04)  # alias 1 only
    p.publish(0, "t", 2, pkid=2, retain=True, props=0x02 | 0x20 | 0x40)
    p.publish(0, "t", 0, props=0x03)  # alias 65: out of range
    p.connect(1, V5, "b", props=0x04 | 0x10)  # receive maximum 1, maximum packet size 24
    p.subscribe(1, [("t/#", 2), ("#", 1)], pkid=1)
    p.ack(1, 0, recent=0)
    p.ack(1, 1, recent=0)
    p.ack(1, 3, recent=0)
    yield "alias_retain", p

    # $-topics, invalid filters, garbage after CONNECT.
    p = Program()
    p.connect(0, V311, "a")
    p.subscribe(0, [("$SYS/#", 0), ("t/#/x", 1), ("", 0)], pkid=1)
    p.publish(0, "$SYS/x", 1, pkid=2)
    p.publish(0, "a/+", 0)
    p.connect(1, V5, "b")
    p.subscribe(1, [("$share/g", 0), ("$share//t", 1), ("+", 2)], pkid=3)
    p.garbage(1, bytes([0x30, 0x05, 0x00, 0x01]))
    p.garbage(0, bytes([0xF0, 0x00]))
    yield "invalid", p

    # A 3.1 client, empty client ids, half a packet then a close.
    p = Program()
    p.connect(0, V31, "")
    p.connect(1, V311, "", clean=False)
    p.connect(2, V5, "", clean=False)
    p.subscribe(2, [("t", 1)], pkid=1)
    p.publish(2, "t", 1, pkid=1, half=True)
    p.publish(0, "t", 2, pkid=1)
    p.close(2)
    yield "empty_ids", p


def main():
    directory = os.path.join("seeds", "session_sequence")
    os.makedirs(directory, exist_ok=True)
    for name, program in seeds():
        with open(os.path.join(directory, name + ".bin"), "wb") as f:
            f.write(bytes(program.out))


if __name__ == "__main__":
    main()

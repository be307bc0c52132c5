#!/usr/bin/env python3
"""Starling and Mosquitto side by side under EMQ's emqtt-bench, a load generator we did not write.

emqtt-bench's publishers send one PUBLISH per write, as devices do. Every scenario runs --rounds
times, Starling and Mosquitto interleaved round by round, each round on a fresh broker process;
the report gives per-broker medians (with min-max) and the Starling/Mosquitto ratio.

"Per broker CPU-second" divides what the subscribers received by the broker's own utime+stime
(/proc/<pid>/stat) over the same window: the window runs from one of emqtt-bench's per-second
"recv total=" lines to a later one, and the broker's CPU time is read as each line arrives.

  scripts/ebench-compare.py --starling-bin target/release/starling-broker [--rounds 3]

emqtt-bench comes from ../shared/tools/ebench-build (default path /tmp/ebench/emqtt_bench).
Scenarios: fan-in-qos0, fan-in-qos1 (--publishers → 1 subscriber, 64-byte payloads, as fast
as the publishers go; QoS 1 with one in flight per publisher), fan-out-qos0 (1 → 50) and
idle (--idle connections, RSS growth per connection). Not a test: it prints figures.
"""

import argparse
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def raise_nofile(wanted):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class Broker:
    """One broker process on a free loopback port, killed on exit."""

    def __init__(self, kind, args, workdir):
        self.kind = kind
        self.port = free_port()
        log = open(os.path.join(workdir, f"{kind}-{self.port}.log"), "w")
        if kind == "starling":
            cmd = [args.starling_bin, "--tcp", f"127.0.0.1:{self.port}", "--no-admin", "--log-level", "warn"]
        else:
            conf = os.path.join(workdir, f"mosquitto-{self.port}.conf")
            with open(conf, "w") as f:
                f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000\n")
            cmd = [args.mosquitto_bin, "-c", conf]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{kind} did not start listening on {self.port}; see {log.name}")
                time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Bench:
    """One emqtt-bench process whose counter lines ("recv total=N", or another `marker`) are
    stamped with the time and the broker's CPU as they arrive."""

    def __init__(self, args, sub_args, broker, marker="recv total="):
        self.marker = marker
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(
            [args.ebench, *sub_args, "-h", "127.0.0.1", "-p", str(broker.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pid = broker.proc.pid
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if self.marker in line:
                total = int(line.split(self.marker)[1].split()[0])
                try:
                    cpu = cpu_seconds(self.pid)
                except OSError:
                    return
                self.lines.put((time.monotonic(), total, cpu))

    def next_count(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"emqtt-bench printed no '{self.marker}' line in time")
            try:
                return self.lines.get(timeout=left)
            except queue.Empty:
                continue

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def run_flow(args, broker, pubs, subs, qos, topic_sub, topic_pub):
    """Subscribers first, then publishers; returns (msgs/s, msgs per broker CPU-s)."""
    sub = Bench(args, ["sub", "-c", str(subs), "-t", topic_sub, "-q", str(qos), "-i", "2"], broker)
    pub = None
    try:
        time.sleep(1.0 + subs * 0.003)
        pub_args = ["pub", "-c", str(pubs), "-I", "0", "-t", topic_pub, "-s", "64", "-q", str(qos), "-i", "2"]
        if qos > 0:
            pub_args += ["-F", "1"]
        pub = Bench(args, pub_args, broker)
        # Warm-up: skip the lines of the first --warmup seconds.
        start = time.monotonic()
        first = sub.next_count(30)
        while first[0] - start < args.warmup:
            first = sub.next_count(30)
        last = first
        while last[0] - first[0] < args.seconds:
            last = sub.next_count(30)
        received = last[1] - first[1]
        elapsed = last[0] - first[0]
        cpu = last[2] - first[2]
        if received <= 0 or cpu <= 0:
            raise SystemExit(f"{broker.kind}: nothing received in the window ({received} msgs, {cpu:.2f} CPU-s)")
        return received / elapsed, received / cpu
    finally:
        if pub:
            pub.stop()
        sub.stop()


def run_idle(args, broker):
    """RSS growth per idle connection, read 1 s after emqtt-bench reports them all connected."""
    before = rss_bytes(broker.proc.pid)
    conn = Bench(args, ["conn", "-c", str(args.idle), "-R", "2000"], broker, marker="connect_succ total=")
    try:
        connected = 0
        while connected < args.idle:
            connected = conn.next_count(30)[1]
        time.sleep(1.0)
        return (rss_bytes(broker.proc.pid) - before) / args.idle / 1024
    finally:
        conn.stop()


SCENARIOS = {
    "fan-in-qos0": ("fan-in QoS 0 ({p} → 1), one PUBLISH per write", lambda a, b: run_flow(a, b, a.publishers, 1, 0, "bench/#", "bench/%i")),
    "fan-in-qos1": ("fan-in QoS 1 ({p} → 1, 1 in flight each)", lambda a, b: run_flow(a, b, a.publishers, 1, 1, "bench/#", "bench/%i")),
    "fan-out-qos0": ("fan-out QoS 0 (1 → 50), deliveries", lambda a, b: run_flow(a, b, 1, 50, 0, "bench/one", "bench/one")),
    "idle": ("{i} idle connections", None),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_target = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "..", "target"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ebench", default="/tmp/ebench/emqtt_bench")
    p.add_argument("--starling-bin", default=os.path.join(default_target, "release", "starling-broker"))
    p.add_argument("--mosquitto-bin", default="mosquitto")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8, help="measured window per run")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--publishers", type=int, default=10)
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = p.parse_args()
    for path in (args.ebench, args.starling_bin):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"not executable: {path}")
    raise_nofile(args.idle * 2 + 1000)
    chosen = args.scenarios.split(",")
    for name in chosen:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name}; known: {', '.join(SCENARIOS)}")
    workdir = tempfile.mkdtemp(prefix="ebench-compare-")
    print(f"emqtt-bench {args.ebench}; logs in {workdir}; {args.rounds} rounds, interleaved", flush=True)
    results = {}
    for name in chosen:
        for rnd in range(args.rounds):
            order = ["starling", "mosquitto"] if rnd % 2 == 0 else ["mosquitto", "starling"]
            for kind in order:
                broker = Broker(kind, args, workdir)
                try:
                    if name == "idle":
                        value = (None, run_idle(args, broker))
                    else:
                        value = SCENARIOS[name][1](args, broker)
                finally:
                    broker.stop()
                results.setdefault((name, kind), []).append(value)
                shown = f"{value[1]:.2f} KiB/conn" if name == "idle" else f"{value[0]:,.0f} msgs/s, {value[1]:,.0f} per CPU-s"
                print(f"  {name} round {rnd + 1} {kind}: {shown}", flush=True)
    print()
    print("| scenario (emqtt-bench) | Starling | Mosquitto | Starling/Mosquitto |")
    print("|---|---|---|---|")
    for name in chosen:
        title = SCENARIOS[name][0].format(p=args.publishers, i=args.idle)
        rows = [("msgs/s", 0), ("msgs per broker CPU-s", 1)] if name != "idle" else [("RSS per connection, KiB", 1)]
        for label, index in rows:
            s = [v[index] for v in results[(name, "starling")]]
            m = [v[index] for v in results[(name, "mosquitto")]]
            fmt = (lambda x: f"{x:.2f}") if name == "idle" else (lambda x: f"{x:,.0f}")
            cell = lambda xs: f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"
            print(f"| {title}: {label} | {cell(s)} | {cell(m)} | {statistics.median(s) / statistics.median(m):.2f}× |")


if __name__ == "__main__":
    sys.exit(main())

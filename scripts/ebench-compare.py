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

With --cluster it compares Starling with itself instead: a two-node cluster (a real
redis-server, gossip on loopback, fresh processes every round) with the publishers on node A and
the subscribers on node B (cross-node, every message relayed through Redis) against the same
flow with every client on node A (same-node); per CPU-second counts both nodes' CPU, and Redis's
is shown apart. Scenarios: fan-in-qos0, fan-in-qos1.

  scripts/ebench-compare.py --cluster --starling-bin target/release/starling-broker
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


def wait_listening(port, proc, what, log_name):
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start listening on {port}; see {log_name}")
            time.sleep(0.05)


class StarlingCluster:
    """A real redis-server and two Starling nodes (A, B) sharing it, gossiping on loopback.
    `pub_port` is node A's MQTT port; `sub_port` node B's (`cross`) or node A's; `pids` the
    nodes' processes (their CPU is what "per broker CPU-second" counts), `redis_pid` Redis's."""

    def __init__(self, args, workdir, cross):
        self.kind = "cross-node" if cross else "same-node"
        redis_port = free_port()
        redis_log = open(os.path.join(workdir, f"redis-{redis_port}.log"), "w")
        self.redis = subprocess.Popen(
            [args.redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=redis_log,
            stderr=subprocess.STDOUT,
        )
        self.nodes = []
        try:
            wait_listening(redis_port, self.redis, "redis-server", redis_log.name)
            seeds = []
            for name in ("node-a", "node-b"):
                mqtt, gossip = free_port(), free_port()
                conf = os.path.join(workdir, f"{name}-{mqtt}.toml")
                with open(conf, "w") as f:
                    listed = ", ".join(f'"127.0.0.1:{g}"' for g in seeds)
                    f.write(
                        f'[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/"\n'
                        f'gossip_bind = "127.0.0.1:{gossip}"\ngossip_seeds = [{listed}]\n'
                    )
                log = open(os.path.join(workdir, f"{name}-{mqtt}.log"), "w")
                proc = subprocess.Popen(
                    [args.starling_bin, "--config", conf, "--node-id", name, "--tcp", f"127.0.0.1:{mqtt}", "--no-admin", "--log-level", "warn"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                self.nodes.append((proc, mqtt))
                wait_listening(mqtt, proc, name, log.name)
                seeds.append(gossip)
        except BaseException:
            self.stop()
            raise
        # The nodes find each other by gossip within a second or two.
        time.sleep(2.0)
        self.pub_port = self.nodes[0][1]
        self.sub_port = self.nodes[1][1] if cross else self.nodes[0][1]
        self.pids = [proc.pid for proc, _ in self.nodes]
        self.redis_pid = self.redis.pid

    def stop(self):
        for proc in [p for p, _ in self.nodes] + [self.redis]:
            proc.kill()
            proc.wait()


class Bench:
    """One emqtt-bench process against `port` whose counter lines ("recv total=N", or another
    `marker`) are stamped with the time and the CPU of the processes `pids` (and of `apart`,
    counted separately) as they arrive."""

    def __init__(self, args, sub_args, port, pids, marker="recv total=", apart=None):
        self.marker = marker
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(
            [args.ebench, *sub_args, "-h", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pids = pids
        self.apart = apart
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if self.marker in line:
                total = int(line.split(self.marker)[1].split()[0])
                try:
                    cpu = sum(cpu_seconds(pid) for pid in self.pids)
                    apart = cpu_seconds(self.apart) if self.apart else 0.0
                except OSError:
                    return
                self.lines.put((time.monotonic(), total, cpu, apart))

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
    """Subscribers first, then publishers; returns (msgs/s, msgs per broker CPU-s, Redis's
    CPU-s per 1,000 msgs). `broker` is a Broker or a StarlingCluster."""
    if isinstance(broker, StarlingCluster):
        pub_port, sub_port, pids, apart = broker.pub_port, broker.sub_port, broker.pids, broker.redis_pid
    else:
        pub_port, sub_port, pids, apart = broker.port, broker.port, [broker.proc.pid], None
    sub = Bench(args, ["sub", "-c", str(subs), "-t", topic_sub, "-q", str(qos), "-i", "2"], sub_port, pids, apart=apart)
    pub = None
    try:
        time.sleep(1.0 + subs * 0.003)
        pub_args = ["pub", "-c", str(pubs), "-I", "0", "-t", topic_pub, "-s", "64", "-q", str(qos), "-i", "2"]
        if qos > 0:
            pub_args += ["-F", "1"]
        pub = Bench(args, pub_args, pub_port, pids)
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
        return received / elapsed, received / cpu, (last[3] - first[3]) / received * 1000
    finally:
        if pub:
            pub.stop()
        sub.stop()


def run_idle(args, broker):
    """RSS growth per idle connection, read 1 s after emqtt-bench reports them all connected."""
    before = rss_bytes(broker.proc.pid)
    conn = Bench(args, ["conn", "-c", str(args.idle), "-R", "2000"], broker.port, [broker.proc.pid], marker="connect_succ total=")
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
    p.add_argument("--scenarios", default=None, help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--cluster", action="store_true", help="cross-node against same-node on a two-node Starling cluster")
    p.add_argument("--redis-bin", default="redis-server")
    args = p.parse_args()
    if args.scenarios is None:
        args.scenarios = "fan-in-qos0,fan-in-qos1" if args.cluster else ",".join(SCENARIOS)
    for path in (args.ebench, args.starling_bin):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"not executable: {path}")
    raise_nofile(args.idle * 2 + 1000)
    chosen = args.scenarios.split(",")
    for name in chosen:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name}; known: {', '.join(SCENARIOS)}")
        if args.cluster and not name.startswith("fan-in"):
            raise SystemExit(f"--cluster measures fan-in-qos0 and fan-in-qos1, not {name}")
    workdir = tempfile.mkdtemp(prefix="ebench-compare-")
    print(f"emqtt-bench {args.ebench}; logs in {workdir}; {args.rounds} rounds, interleaved", flush=True)
    if args.cluster:
        return compare_cluster(args, chosen, workdir)
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


def compare_cluster(args, chosen, workdir):
    """Cross-node against same-node, interleaved round by round, fresh cluster every run."""
    results = {}
    for name in chosen:
        for rnd in range(args.rounds):
            order = [True, False] if rnd % 2 == 0 else [False, True]
            for cross in order:
                cluster = StarlingCluster(args, workdir, cross)
                try:
                    value = SCENARIOS[name][1](args, cluster)
                finally:
                    cluster.stop()
                results.setdefault((name, cluster.kind), []).append(value)
                print(
                    f"  {name} round {rnd + 1} {cluster.kind}: {value[0]:,.0f} msgs/s, {value[1]:,.0f} per CPU-s of both nodes, "
                    f"Redis {value[2]:.3f} CPU-s per 1,000 msgs",
                    flush=True,
                )
    print()
    print("| scenario (emqtt-bench, two nodes, one Redis) | cross-node | same-node | cross ÷ same |")
    print("|---|---|---|---|")
    for name in chosen:
        title = SCENARIOS[name][0].format(p=args.publishers, i=args.idle)
        for label, index in [("msgs/s", 0), ("msgs per CPU-s of both nodes", 1)]:
            c = [v[index] for v in results[(name, "cross-node")]]
            s = [v[index] for v in results[(name, "same-node")]]
            cell = lambda xs: f"{statistics.median(xs):,.0f} ({min(xs):,.0f}–{max(xs):,.0f})"
            print(f"| {title}: {label} | {cell(c)} | {cell(s)} | {statistics.median(c) / statistics.median(s):.2f}× |")
        redis = [v[2] for v in results[(name, "cross-node")]]
        print(f"| {title}: Redis CPU-s per 1,000 msgs | {statistics.median(redis):.3f} | — | — |")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Assembles a stand-in for the official Redis image, for a test cluster that cannot pull one.

The real-pods suite (e2e/tests/kubernetes.rs) runs a managed Redis with Sentinel, whose pods
run the operator's start scripts with the image's `sh` and small tools, then `redis-server` or
`redis-sentinel`, and ask peers with `redis-cli`. Its node has no registry, so this builds an
image holding what the scripts use from the official `redis:*-alpine` image, taken from this
(Debian) machine:

  - Debian's redis-server at /usr/local/bin/redis-server, with redis-sentinel a link to it
    (Redis picks sentinel mode by the name it runs under), and redis-cli;
  - the shared libraries `ldd` names for them, and the dynamic loader;
  - a static busybox (Debian package busybox-static) as sh, awk, sed, grep and the other
    applets the scripts call, as Alpine's image has them;
  - /etc/passwd and /etc/group with root and redis (999), /data owned by redis, /tmp.

No entrypoint: the operator names the command of every container. The archive is written by
scripts/oci-image.py (OCI layout plus a Docker manifest.json; `ctr images import` reads it).

Usage: redis-standin-image.py --name REF --out ARCHIVE [--busybox PATH]
Prints `REF sha256:<manifest digest> ARCHIVE` on success.
"""

import argparse
import importlib.util
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("oci_image", os.path.join(HERE, "oci-image.py"))
oci = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oci)

REDIS_UID = 999
APPLETS = [
    "sh", "awk", "sed", "grep", "tr", "cut", "cat", "ls", "sleep", "timeout", "sha1sum",
    "env", "printf", "echo", "head", "test", "[", "rm", "mkdir", "id",
]
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nredis:x:999:999:redis:/data:/sbin/nologin\n"
GROUP = "root:x:0:\nredis:x:999:\n"


def executable(name):
    path = shutil.which(name)
    if path is None:
        raise oci.Fail(f"{name} not found (Debian packages redis-server, redis-sentinel, redis-tools)")
    return os.path.realpath(path)


def build(opts):
    tree = oci.Tree()
    for d in ("etc", "usr/local/bin", "usr/bin", "var", "root"):
        tree.directory(d)
    tree.directory("tmp", 0o1777)
    tree.directory("data", 0o755, REDIS_UID)
    tree.file("etc/passwd", 0o644, PASSWD.encode())
    tree.file("etc/group", 0o644, GROUP.encode())
    tree.file("etc/nsswitch.conf", 0o644, oci.NSSWITCH.encode())
    server = executable("redis-server")
    cli = executable("redis-cli")
    tree.file("usr/local/bin/redis-server", 0o755, source=server)
    tree.symlink("usr/local/bin/redis-sentinel", "redis-server")
    tree.file("usr/local/bin/redis-cli", 0o755, source=cli)
    for binary in (server, cli):
        for lib in oci.shared_objects(binary):
            tree.host_path(lib)
    if not os.access(opts.busybox, os.X_OK):
        raise oci.Fail(f"no busybox at {opts.busybox} (Debian package busybox-static)")
    if oci.shared_objects(opts.busybox):
        raise oci.Fail(f"{opts.busybox} is not static (use Debian's busybox-static)")
    tree.file("usr/bin/busybox", 0o755, source=opts.busybox)
    for applet in APPLETS:
        tree.symlink(f"usr/bin/{applet}", "busybox")
    tree.symlink("bin", "usr/bin")
    config = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/data",
        "User": f"{REDIS_UID}:{REDIS_UID}",
        "Cmd": ["redis-server"],
        "ExposedPorts": {"6379/tcp": {}},
    }
    oci.write_archive(tree, config, opts.name, opts.out, "scripts/redis-standin-image.py")


def main():
    p = argparse.ArgumentParser(description="Assemble a Redis stand-in image as an OCI archive.")
    p.add_argument("--name", required=True, help="image reference, e.g. starling-e2e/redis:test")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--busybox", default="/bin/busybox")
    opts = p.parse_args()
    try:
        build(opts)
    except (oci.Fail, OSError) as e:
        print(f"redis-standin-image.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

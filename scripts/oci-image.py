#!/usr/bin/env python3
"""Assembles one of Starling's container images, without a container engine, as an archive.

scripts/build-images.sh calls this once per image. The image is described by a stage of the
Dockerfile (LABEL, USER, EXPOSE, STOPSIGNAL, ENTRYPOINT, CMD and the COPY that places the
binary): the Dockerfile stays the one description of both images, for Docker users and for this
daemonless path alike. The base it stands in for is gcr.io/distroless/cc-debian12:nonroot, so the
image holds what that base holds that a Rust binary needs, taken from this (Debian) machine:

  - the binary, at the path the Dockerfile's COPY names;
  - the shared libraries `ldd` names for it, and the dynamic loader, at their Debian paths
    (merged /usr: /lib and /lib64 are symbolic links, as on the host);
  - /etc/passwd and /etc/group with root, nobody and nonroot (65532), /etc/nsswitch.conf;
  - the CA certificates bundle, /etc/ssl/certs/ca-certificates.crt;
  - /tmp (mode 1777), /root and /home/nonroot (0700, the latter owned by 65532).

There is no shell and no package manager. Libraries outside the distroless `cc` set are
reported, since the real base would lack them.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that also carries
a Docker `manifest.json`: `ctr images import` reads the former (tested with containerd 1.6, which
is also what `kind load image-archive` and `k3d image import` run), `docker load` the latter
(not tested here: no Docker daemon). The layer is an uncompressed tar.

Reproducible: every timestamp is SOURCE_DATE_EPOCH, entries are sorted, owners are numeric
(0, except /home/nonroot), JSON is written with sorted keys; the same inputs give the same bytes,
hence the same digests.

Usage: oci-image.py --dockerfile Dockerfile --target broker --binary PATH --name REF
                    --version V --out ARCHIVE [--ca-bundle FILE]
Prints `REF sha256:<manifest digest> ARCHIVE` on success.
"""

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

# Shared objects present in gcr.io/distroless/cc-debian12 (libc6, libgcc-s1, libgomp1,
# libstdc++6, libssl3), by soname prefix.
DISTROLESS_CC = (
    "ld-linux",
    "libc.so",
    "libm.so",
    "libdl.so",
    "libpthread.so",
    "librt.so",
    "libutil.so",
    "libresolv.so",
    "libgcc_s.so",
    "libgomp.so",
    "libstdc++.so",
    "libssl.so",
    "libcrypto.so",
)

NONROOT = 65532
CHUNK = 1 << 20

PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = f"root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:{NONROOT}:\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"

# The base image's configuration (distroless nonroot), before the Dockerfile's instructions.
BASE_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
]


class Fail(Exception):
    """A problem with the inputs, reported as one line."""


def dockerfile_stage(path, target, args):
    """The instructions of stage `target` that shape the image, with ARGs substituted."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # Join continuation lines, drop comments and blank lines.
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)

    defaults = {}  # ARGs declared before the first FROM
    in_stage, seen_from, scope = False, False, {}
    stage = {"labels": {}, "ports": [], "copy": None}

    def expand(value):
        def sub(m):
            name = m.group(1) or m.group(2)
            if name not in scope:
                raise Fail(f"{path}: stage {target} uses ${name}, which it does not declare")
            return scope[name]

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)

    for line in lines:
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            seen_from = True
            parts = rest.split()
            in_stage = len(parts) >= 3 and parts[-2].upper() == "AS" and parts[-1] == target
            scope = {}
            continue
        if word == "ARG":
            name, eq, value = rest.partition("=")
            if not seen_from:
                defaults[name] = value.strip('"') if eq else ""
            elif in_stage:
                scope[name] = args.get(name, value.strip('"') if eq else defaults.get(name, ""))
            continue
        if not in_stage:
            continue
        if word == "LABEL":
            for item in shlex.split(rest):
                key, eq, value = item.partition("=")
                if not eq:
                    raise Fail(f"{path}: LABEL {item!r} is not key=value")
                stage["labels"][key] = expand(value)
        elif word == "EXPOSE":
            for port in rest.split():
                stage["ports"].append(port if "/" in port else port + "/tcp")
        elif word in ("ENTRYPOINT", "CMD"):
            try:
                value = json.loads(rest)
            except json.JSONDecodeError:
                raise Fail(f"{path}: {word} of stage {target} is not in JSON form (no shell in the image)")
            stage[word.lower()] = value
        elif word == "USER":
            stage["user"] = expand(rest)
        elif word == "STOPSIGNAL":
            stage["stopsignal"] = rest
        elif word == "WORKDIR":
            stage["workdir"] = expand(rest)
        elif word == "ENV":
            raise Fail(f"{path}: ENV in stage {target} is not supported by this builder")
        elif word == "COPY":
            stage["copy"] = shlex.split(rest)[-1]
    if stage["copy"] is None or "entrypoint" not in stage:
        raise Fail(f"{path}: no stage `{target}` with a COPY and an ENTRYPOINT")
    return stage


def shared_objects(binary):
    """The absolute paths `ldd` names for `binary` (libraries and the dynamic loader)."""
    run = subprocess.run(
        ["ldd", binary], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C")
    )
    out = run.stdout + run.stderr
    if "not a dynamic executable" in out or "statically linked" in out:
        return []
    if run.returncode != 0:
        raise Fail(f"ldd {binary} failed: {out.strip()}")
    paths = []
    for line in run.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise Fail(f"{binary}: shared library not found: {line}")
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (")[0]
        else:
            target = line.split(" (")[0]
        if target.startswith("/"):
            paths.append(target)
    return paths


class Tree:
    """The image's root filesystem: path (no leading slash) -> entry."""

    def __init__(self):
        self.entries = {}

    def _parents(self, path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), ("dir", 0o755, 0, None))

    def directory(self, path, mode=0o755, uid=0):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("dir", mode, uid, None)

    def file(self, path, mode, data=None, source=None):
        """A regular file with `data`, or with the contents of the host file `source`."""
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("file", mode, 0, ("path", source) if source else data)

    def symlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("link", 0o777, 0, target)

    def host_path(self, path):
        """Adds the host's file `path` with its mode, at its real directory, and the symbolic
        link a leading directory of `path` is on the host (Debian's /lib -> usr/lib)."""
        real = os.path.realpath(path)
        mode = os.stat(real).st_mode & 0o7777
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            prefix = "/" + "/".join(parts[:i])
            if os.path.islink(prefix):
                self.symlink(prefix, os.readlink(prefix))
                break
        directory = os.path.realpath(os.path.dirname(path))
        self.file(os.path.join(directory, parts[-1]), mode, source=real)

    def write_layer(self, out, mtime):
        """Writes the tree as a tar to the open binary file `out`."""
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, uid, data = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime, info.mode, info.uid, info.gid = mtime, mode, uid, uid
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                elif isinstance(data, tuple):
                    info.size = os.path.getsize(data[1])
                    with open(data[1], "rb") as f:
                        tar.addfile(info, f)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def build(opts):
    stage = dockerfile_stage(opts.dockerfile, opts.target, {"VERSION": opts.version})

    tree = Tree()
    for d in ("etc", "etc/ssl/certs", "usr/local/bin", "var"):
        tree.directory(d)
    tree.directory("tmp", 0o1777)
    tree.directory("root", 0o700)
    tree.directory("home/nonroot", 0o700, NONROOT)
    tree.file("etc/passwd", 0o644, PASSWD.encode())
    tree.file("etc/group", 0o644, GROUP.encode())
    tree.file("etc/nsswitch.conf", 0o644, NSSWITCH.encode())
    if not os.path.isfile(opts.ca_bundle):
        raise Fail(f"no CA bundle at {opts.ca_bundle} (Debian package ca-certificates)")
    tree.file("etc/ssl/certs/ca-certificates.crt", 0o644, source=opts.ca_bundle)
    if not os.access(opts.binary, os.X_OK):
        raise Fail(f"{opts.binary} is not an executable file")
    tree.file(stage["copy"], 0o755, source=opts.binary)
    for lib in shared_objects(opts.binary):
        if not os.path.basename(lib).startswith(DISTROLESS_CC):
            print(f"warning: {opts.target} needs {lib}, which distroless cc-debian12 lacks", file=sys.stderr)
        tree.host_path(lib)

    config = {
        "Env": BASE_ENV,
        "WorkingDir": stage.get("workdir", "/home/nonroot"),
        "User": stage.get("user", str(NONROOT)),
        "Entrypoint": stage["entrypoint"],
        "Labels": stage["labels"],
    }
    if "cmd" in stage:
        config["Cmd"] = stage["cmd"]
    if stage["ports"]:
        config["ExposedPorts"] = {p: {} for p in stage["ports"]}
    if "stopsignal" in stage:
        config["StopSignal"] = stage["stopsignal"]
    write_archive(tree, config, opts.name, opts.out, f"scripts/build-images.sh ({opts.target})")


def write_archive(tree, config, image_name, out, created_by):
    """Writes `tree` as the one layer of an image with the container `config` (Entrypoint,
    User, ...) to the archive `out` (OCI layout plus a Docker manifest.json), named `image_name`;
    prints `NAME sha256:<manifest digest> OUT`."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    out_dir = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".oci-image-") as work:
        layer_path = os.path.join(work, "layer.tar")
        with open(layer_path, "wb") as f:
            tree.write_layer(f, epoch)
        layer_digest = sha256_file(layer_path)
        layer_size = os.path.getsize(layer_path)
        image_config = canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": created,
                "author": created_by.split(" ")[0],
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
                "history": [{"created": created, "created_by": created_by}],
            }
        )
        config_digest = hashlib.sha256(image_config).hexdigest()
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": f"sha256:{config_digest}",
                    "size": len(image_config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": f"sha256:{layer_digest}",
                        "size": layer_size,
                    }
                ],
                "annotations": {"org.opencontainers.image.created": created},
            }
        )
        manifest_digest = hashlib.sha256(manifest).hexdigest()
        tag = image_name.rsplit(":", 1)[1] if ":" in image_name.rsplit("/", 1)[-1] else "latest"
        index = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{manifest_digest}",
                        "size": len(manifest),
                        "platform": {"architecture": "amd64", "os": "linux"},
                        "annotations": {
                            # containerd (ctr, kind) names the image from the first, others
                            # from the second (a tag, as the OCI layout specification says).
                            "io.containerd.image.name": image_name,
                            "org.opencontainers.image.ref.name": tag,
                        },
                    }
                ],
            }
        )
        docker_manifest = canonical_json(
            [
                {
                    "Config": f"blobs/sha256/{config_digest}",
                    "RepoTags": [image_name],
                    "Layers": [f"blobs/sha256/{layer_digest}"],
                }
            ]
        )

        members = {
            "blobs": ("dir", None),
            "blobs/sha256": ("dir", None),
            f"blobs/sha256/{config_digest}": ("bytes", image_config),
            f"blobs/sha256/{manifest_digest}": ("bytes", manifest),
            f"blobs/sha256/{layer_digest}": ("path", layer_path),
            "index.json": ("bytes", index),
            "manifest.json": ("bytes", docker_manifest),
            "oci-layout": ("bytes", canonical_json({"imageLayoutVersion": "1.0.0"})),
        }
        partial = out + ".partial"
        with open(partial, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            # oci-layout first: importers that stream the archive know its kind at once.
            for name in ["oci-layout"] + sorted(m for m in members if m != "oci-layout"):
                kind, data = members[name]
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
                if kind == "dir":
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif kind == "path":
                    info.mode, info.size = 0o644, os.path.getsize(data)
                    with open(data, "rb") as blob:
                        tar.addfile(info, blob)
                else:
                    info.mode, info.size = 0o644, len(data)
                    tar.addfile(info, io.BytesIO(data))
        os.replace(partial, out)
    print(f"{image_name} sha256:{manifest_digest} {out}")


def main():
    p = argparse.ArgumentParser(description="Assemble one Starling image as an OCI archive.")
    p.add_argument("--dockerfile", required=True)
    p.add_argument("--target", required=True, help="the Dockerfile stage: broker or operator")
    p.add_argument("--binary", required=True)
    p.add_argument("--name", required=True, help="image reference, e.g. ghcr.io/x/y:1.0")
    p.add_argument("--version", required=True, help="the Dockerfile's VERSION build argument")
    p.add_argument("--out", required=True, help="archive to write")
    p.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    opts = p.parse_args()
    try:
        build(opts)
    except (Fail, OSError) as e:
        print(f"oci-image.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Builds Starling's two container images, starling-broker and starling-operator, without a
# container engine or a registry: each is an OCI archive (with a Docker manifest.json as well)
# assembled by scripts/oci-image.py from a release binary, the Dockerfile's stage of the same
# name (user 65532:65532, entrypoint, ports, stop signal, labels) and a distroless-like root
# filesystem taken from this Debian machine (the binary's shared libraries, passwd/group, CA
# certificates, /tmp; no shell, no package manager). Same inputs, same digests.
#
#   scripts/build-images.sh [--bin-dir DIR] [--out DIR] [--version V] [--prefix REPO_PREFIX]
#                           [broker] [operator]
#
# Without --bin-dir it runs `cargo build --release --locked` for the binaries and takes them from
# ${CARGO_TARGET_DIR:-target}/release. Each archive is written to OUT (default
# ${CARGO_TARGET_DIR:-target}/images) as starling-<name>.tar, and one line per image is printed:
# the reference, the manifest digest, the archive. Load them with any of:
#
#   kind load image-archive target/images/starling-broker.tar      (and the operator's)
#   k3d image import target/images/starling-broker.tar target/images/starling-operator.tar
#   minikube image load target/images/starling-broker.tar
#   docker load -i target/images/starling-broker.tar
#   ctr -n k8s.io images import target/images/starling-broker.tar   (containerd, on the node)
#
# The references are PREFIX/starling-broker:VERSION and PREFIX/starling-operator:VERSION,
# PREFIX ghcr.io/starling-mqtt and VERSION the workspace's version by default: the names the
# chart and the MqttCluster default to, so `imagePullPolicy: IfNotPresent` finds them.
# SOURCE_DATE_EPOCH sets every timestamp (default: the time of the last git commit, else 0).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

bin_dir="" out="" version="" prefix="ghcr.io/starling-mqtt" targets=()
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --version) version="${2:?--version needs a version}"; shift 2 ;;
    --prefix) prefix="${2:?--prefix needs a repository prefix}"; shift 2 ;;
    broker|operator) targets+=("$1"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
((${#targets[@]})) || targets=(broker operator)

target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="${out:-$target_dir/images}"
if [ -z "$version" ]; then
  version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH

if [ -z "$bin_dir" ]; then
  packages=()
  for t in "${targets[@]}"; do packages+=(-p "starling-$t"); done
  (cd "$root" && cargo build --release --locked "${packages[@]}")
  bin_dir="$target_dir/release"
fi

mkdir -p "$out"
for t in "${targets[@]}"; do
  binary="$bin_dir/starling-$t"
  # The image's version label must be what its binary says it is.
  said="$("$binary" --version)" || { echo "build-images.sh: $binary --version failed" >&2; exit 1; }
  if [ "$said" != "starling-$t $version" ]; then
    echo "build-images.sh: $binary says '$said', expected 'starling-$t $version'" >&2
    exit 1
  fi
  python3 "$root/scripts/oci-image.py" --dockerfile "$root/Dockerfile" --target "$t" \
    --binary "$binary" --name "$prefix/starling-$t:$version" --version "$version" \
    --out "$out/starling-$t.tar"
done

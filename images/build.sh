#!/usr/bin/env bash
# build.sh builds the cvmd VM image: a Debian kernel and a reproducible initramfs
# whose /init is cvmd. See images/README.md.
#
# Environment (all optional):
#   INIT=bin/cvmd            the binary that becomes /init
#   NAME=initramfs           output name: $OUT/$NAME.cpio.zst (and staging $OUT/root-$NAME)
#   OUT=images/out           outputs and the download cache
#   KERNEL_PKG=...           Debian kernel package (default: what linux-image-amd64 depends on)
#   IMAGE_PYTHON=1           add python3 with numpy, pandas, scikit-learn and joblib
#   SOURCE_DATE_EPOCH=N      time of every file (default: the last commit's time)
#   IMAGE_VERSION=v          /etc/os-release VERSION_ID (default: git describe --always --dirty)
#   EXTRA=dir                a tree copied over the root last (tests add probes this way)
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
repo=$PWD
INIT=${INIT:-bin/cvmd}
NAME=${NAME:-initramfs}
OUT=${OUT:-images/out}
IMAGE_PYTHON=${IMAGE_PYTHON:-0}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}
IMAGE_VERSION=${IMAGE_VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
export SOURCE_DATE_EPOCH
log() { echo "image: $*" >&2; }

[ -x "$INIT" ] || { log "$INIT is missing: run make cvmd first"; exit 1; }
command -v dpkg-deb >/dev/null && command -v modinfo >/dev/null && command -v zstd >/dev/null && command -v qemu-system-x86_64 >/dev/null \
  || scripts/deps.sh vm

mkdir -p "$OUT/debs"
debs=$(cd "$OUT/debs" && pwd)

# fetch PKG...: download each package into the cache unless a deb of it is there.
fetch() {
  local need=()
  for p in "$@"; do
    compgen -G "$debs/${p}_*.deb" >/dev/null || need+=("$p")
  done
  if ((${#need[@]})); then
    log "downloading ${need[*]}"
    # A fresh machine (or CI container) may have no or stale package lists: update once and retry.
    if ! (cd "$debs" && apt-get download -q "${need[@]}" >/dev/null 2>&1); then
      log "apt-get download failed; updating the package lists and retrying"
      apt-get update -qq >/dev/null
      (cd "$debs" && apt-get download -q "${need[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2; exit "${PIPESTATUS[0]}") || {
        log "apt-get download ${need[*]} failed"; exit 1; }
    fi
  fi
}
# deb PKG: the cached deb of a package (the newest if there are several).
deb() { ls "$debs/${1}"_*.deb | sort -V | tail -1; }

# --- kernel -------------------------------------------------------------------
if [ -z "${KERNEL_PKG:-}" ]; then
  KERNEL_PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$KERNEL_PKG" ] || KERNEL_PKG=$(ls "$debs" | sed -n 's/^\(linux-image-[0-9][^_]*\)_.*/\1/p' | sort -V | tail -1)
  if [ -z "$KERNEL_PKG" ]; then
    apt-get update -qq >/dev/null
    KERNEL_PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$KERNEL_PKG" ] || { log "cannot find the kernel package linux-image-amd64 depends on"; exit 1; }
fi
kver=${KERNEL_PKG#linux-image-}
fetch "$KERNEL_PKG"
kdir="$OUT/kernel-$kver"
if [ ! -f "$kdir/.done" ]; then
  log "extracting $KERNEL_PKG"
  rm -rf "$kdir" && mkdir -p "$kdir"
  dpkg-deb -x "$(deb "$KERNEL_PKG")" "$kdir"
  touch "$kdir/.done"
fi
cp "$kdir/boot/vmlinuz-$kver" "$OUT/vmlinuz"
mroot="$kdir/lib/modules/$kver"

# --- staging root ---------------------------------------------------------------
root="$OUT/root-$NAME"
rm -rf "$root"
mkdir -p "$root"/{proc,sys,dev,run,tmp,root,etc/cocos,etc/certs,etc/ssl/certs,var/lib/cvmd,usr/bin,usr/lib,usr/lib64}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
# Merged /usr, as Debian has it: one place for every library path a binary may name.
ln -s usr/bin "$root/bin"; ln -s usr/bin "$root/sbin"; ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"

# extract PKG DEST: unpack a cached deb into DEST, folding /lib* and /bin into /usr.
extract() {
  local tmp; tmp=$(mktemp -d)
  dpkg-deb -x "$(deb "$1")" "$tmp"
  for d in bin sbin lib lib64; do
    if [ -d "$tmp/$d" ] && [ ! -L "$tmp/$d" ]; then
      local to=$d; [ "$d" = sbin ] && to=bin
      mkdir -p "$tmp/usr/$to"; cp -a "$tmp/$d/." "$tmp/usr/$to/"; rm -rf "${tmp:?}/$d"
    fi
  done
  rm -rf "$tmp/usr/share/doc" "$tmp/usr/share/lintian" "$tmp/usr/share/man" "$tmp/usr/share/locale" "$tmp/usr/share/info"
  cp -a "$tmp/." "$2/"
  rm -rf "$tmp"
}

# The base of the algorithm sandboxes: a C and C++ runtime for `bin` algorithms.
base_pkgs=(libc6 libgcc-s1 libstdc++6 zlib1g ca-certificates)
fetch "${base_pkgs[@]}"
for p in libc6 libgcc-s1 libstdc++6 zlib1g; do extract "$p" "$root"; done
# Tools and data a sandbox base does not need.
rm -rf "$root/usr/lib/x86_64-linux-gnu/gconv" "$root/usr/bin" "$root/usr/sbin" "$root/usr/libexec" "$root/etc/ld.so.conf.d" "$root/usr/share"
mkdir -p "$root/usr/bin"
# mke2fs for the scratch disk (supervisor/pid1/scratch.go), out of PATH at /usr/lib/cvmd: the
# algorithm sandboxes see /usr but have no business making file systems. With its libraries.
e2fs_pkgs=(e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1)
fetch "${e2fs_pkgs[@]}"
e2dir=$(mktemp -d)
for p in "${e2fs_pkgs[@]}"; do dpkg-deb -x "$(deb "$p")" "$e2dir"; done
mkdir -p "$root/usr/lib/cvmd" "$root/usr/lib/x86_64-linux-gnu"
install -m 0755 "$e2dir/sbin/mke2fs" "$root/usr/lib/cvmd/mke2fs"
for l in libext2fs.so.2 libe2p.so.2 libcom_err.so.2 libblkid.so.1 libuuid.so.1; do
  f=$(find "$e2dir" -name "$l" | head -1)
  [ -n "$f" ] || { log "$l not found in ${e2fs_pkgs[*]}"; exit 1; }
  cp -L "$f" "$root/usr/lib/x86_64-linux-gnu/$l"
done
rm -rf "$e2dir"
# CA certificates: what update-ca-certificates would make, in a fixed order.
cadir=$(mktemp -d); dpkg-deb -x "$(deb ca-certificates)" "$cadir"
find "$cadir/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat > "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$cadir"

if [ "$IMAGE_PYTHON" = 1 ]; then
  # python3 and the sample algorithm's packages, with their run-time library
  # closure, copied from the host's installed Debian packages (scripts/deps.sh
  # installs them). Compilers, perl and -dev packages that the dependency
  # graph drags in (pythran, python3-dev) are left out: algorithms run, they
  # do not build.
  log "adding python3 (IMAGE_PYTHON=1)"
  pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
           --no-enhances python3 python3-venv python3-pip python3-sklearn python3-pandas python3-joblib 2>/dev/null \
         | grep -E '^[a-z0-9]' | sort -u)
  list=$(mktemp)
  for p in $pkgs; do
    case "$p" in
      *-dev|*-dev-bin|gcc*|g++*|cpp*|binutils*|libbinutils|libctf*|libgprofng*|libasan*|liblsan*|libtsan*|libubsan*|libhwasan*|\
      libitm*|libcc1*|libisl*|libmpc*|libmpfr*|libjansson*|perl*|libperl*|python3-pythran|python3-beniget|python3-gast|\
      python3-ply|dpkg|debconf*|libc-bin|procps|tar|readline-common|install-info|\
      sensible-utils|media-types|mime-support|rpcsvc-proto|libgdbm*|libdpkg*|\
      libllvm*|libz3-*|libicu*|libgl*|libegl*|mesa*|libdrm*|libx11*|libxcb*|libx[a-z]*|tk*|libtk*|tcl*|libtcl*|blt|\
      fonts-*|libfont*|libfreetype*|libharfbuzz*|libgraphite*|libslang*|libcairo*|libpango*|python3-tk|\
      libwayland*|libvulkan*|libsensors*|libpciaccess*|libelf*|libedit*|libz3*|libxml2|x11-common) continue;;
    esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || continue
    dpkg -L "$p" >> "$list"
  done
  # Merged /usr on the host: /lib/x → /usr/lib/x. Only files and links; tar makes the directories.
  sed -e 's#^/lib\(64\)\?/#/usr/lib\1/#' -e 's#^/s\?bin/#/usr/bin/#' "$list" \
    | grep -vE '^/usr/share/(doc|man|locale|lintian|info)/|/__pycache__/|/tests?/|^/etc/' | LC_ALL=C sort -u \
    | while read -r f; do if [ -f "$f" ] || [ -L "$f" ]; then echo "${f#/}"; fi; done > "$list.files"
  tar -C / --no-recursion -cf - -T "$list.files" | tar -C "$root" -xf -
  rm -f "$list" "$list.files"
  # Debian's alternatives (libblas.so.3 → /etc/alternatives/… → openblas) are made by
  # update-alternatives, not listed by dpkg -L: copy those whose target was copied.
  mkdir -p "$root/etc/alternatives"
  find /usr/lib/x86_64-linux-gnu -maxdepth 1 -lname '/etc/alternatives/*' | LC_ALL=C sort | while read -r l; do
    if [ -e "$root$(readlink -f "$l")" ]; then cp -a "$l" "$root$l"; cp -a "$(readlink "$l")" "$root$(readlink "$l")"; fi
  done
  ln -sf python3.11 "$root/usr/bin/python3" 2>/dev/null || true
fi

# --- kernel modules, with their dependencies, in load order ----------------------
# Built-in on Debian's kernel: tpm_tis, tpm_crb, the 8250 serial, cgroups, seccomp.
# virtio_blk finds the disks; the scratch disk's own modules (marked "scratch": PID 1 loads them
# only when the VM has one) are dm-integrity and dm-crypt with AES-GCM (the kernel cannot load
# crypto modules on demand: there is no modprobe), and ext4 with its crc32c and quota format. The
# CPU-specific ones are optional (no AES-NI, PCLMUL or SSE4.2: the generic code serves); xts is
# only for the benchmark's crypt-only volume.
wanted=(virtio_pci virtio_net virtio_console virtio-rng 9pnet_virtio 9p overlay
        vsock vmw_vsock_virtio_transport vsock_loopback button evdev sev-guest virtio_blk)
scratch_wanted=(dm-integrity dm-crypt ctr ghash-generic gcm aesni-intel ghash-clmulni-intel xts
        crc32c_generic crc32c-intel ext4 quota_v2)
optional=" sev-guest aesni-intel ghash-clmulni-intel crc32c-intel xts "
declare -A modpath=() seen=() group=()
current_group=
while read -r f; do m=${f##*/}; m=${m%.ko}; modpath[$m]=${f#"$mroot"/}; done < <(find "$mroot/kernel" -name '*.ko')
order=()
visit() {
  local m=$1 dep
  [ -n "${seen[$m]:-}" ] && return
  seen[$m]=1
  [ -n "${modpath[$m]:-}" ] || { log "module $m not found in $KERNEL_PKG"; exit 1; }
  for dep in $(modinfo -F depends "$mroot/${modpath[$m]}" | tr ',' ' '); do
    dep=${dep//-/_}; [ -n "${modpath[$dep]:-}" ] || dep=${dep//_/-}
    visit "$dep"
  done
  order+=("$m")
  group[$m]=$current_group
}
for m in "${wanted[@]}"; do visit "$m"; done
# What only the scratch disk needs (its dependencies not already listed).
current_group=scratch
for m in "${scratch_wanted[@]}"; do visit "$m"; done
kmods="$root/usr/lib/modules/$kver"
mkdir -p "$kmods"
{
  echo "# load order for cvmd's PID 1: module [optional] [scratch]"
  for m in "${order[@]}"; do
    mkdir -p "$kmods/$(dirname "${modpath[$m]}")"
    cp "$mroot/${modpath[$m]}" "$kmods/${modpath[$m]}"
    line=${modpath[$m]}
    if [[ $optional == *" $m "* ]]; then line+=" optional"; fi
    if [ -n "${group[$m]}" ]; then line+=" ${group[$m]}"; fi
    echo "$line"
  done
} > "$kmods/modules.cvmd"

# --- /init and /etc -----------------------------------------------------------------
install -m 0755 "$INIT" "$root/init"
printf 'root:x:0:0:root:/root:/init\nnobody:x:65534:65534:nobody:/nonexistent:/init\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > "$root/etc/hosts"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
printf 'nameserver 10.0.2.3\n' > "$root/etc/resolv.conf"
printf 'cvmd\n' > "$root/etc/hostname"
printf 'ID=cvmd\nNAME="cvmd VM image"\nVERSION_ID=%s\n' "$IMAGE_VERSION" > "$root/etc/os-release"
install -D -m 0644 "$repo/images/ima-policy" "$root/etc/ima/ima-policy"   # PID 1 loads it (IMA, PCR 10)
if [ -n "${EXTRA:-}" ]; then cp -a "$EXTRA/." "$root/"; fi

# --- archive ---------------------------------------------------------------------------
# zstd, not gzip: the kernel unpacks it ~3 s faster under TCG (measured: /init ran at 4.6 s of
# kernel uptime instead of 7.6 s) and it is smaller. Single-threaded, so the bytes are reproducible.
go run ./images/cmd/mkinitramfs -root "$root" -epoch "$SOURCE_DATE_EPOCH" -level 0 -o "$OUT/$NAME.cpio" >/dev/null
zstd -q -12 -T1 -f --rm "$OUT/$NAME.cpio" -o "$OUT/$NAME.cpio.zst"
rm -f "$OUT/$NAME.cpio.gz"
{
  echo "kernel    $KERNEL_PKG ($(dpkg-deb -f "$(deb "$KERNEL_PKG")" Version))"
  for p in "${base_pkgs[@]}" "${e2fs_pkgs[@]}"; do echo "package   $p $(dpkg-deb -f "$(deb "$p")" Version)"; done
  echo "modules   ${order[*]}"
  echo "epoch     $SOURCE_DATE_EPOCH"
  echo "python    $IMAGE_PYTHON"
} > "$OUT/$NAME.manifest"
for f in "$OUT/vmlinuz" "$OUT/$NAME.cpio.zst"; do
  size=$(stat -c %s "$f")
  printf 'image: %s  sha256 %s  %s bytes (%s MiB)\n' "$f" "$(sha256sum "$f" | cut -d' ' -f1)" "$size" \
    "$(awk -v s="$size" 'BEGIN{printf "%.1f", s/1048576}')"
done

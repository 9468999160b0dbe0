#!/usr/bin/env bash
# The README's two commands on a fresh Debian 13 (trixie, Python 3.13): build a root with debootstrap from Debian's
# packages, clone this repository into it, and run `make demo` and `make test` there in a chroot.
#
#   sudo scripts/fresh_check.sh [--rebuild]        (make fresh-check; needs root, debootstrap and a Debian mirror)
#
# The bare root is cached in $CACHE (debootstrap takes minutes); --rebuild makes it again. Every run works on a
# copy of it, so each check starts from the same untouched system. Environment:
#   SUITE (trixie)  MIRROR (the Debian mirror this machine's apt uses)  CACHE (/var/tmp/cvload-fresh-check)
#   PACKAGES (the bare system: python3,python3-venv,make,git,ca-certificates)
#   PREREQS (what README.md asks a Python 3.13 user to add: build-essential python3-dev)  KEEP=1 (keep the root)
#   PIP_CACHE=DIR (mount DIR as pip's cache inside: a second run reuses the numpy 1.26 wheel built by the first;
#   default none, every run downloads and builds everything)
set -euo pipefail

SUITE=${SUITE:-trixie}
CACHE=${CACHE:-/var/tmp/cvload-fresh-check}
PACKAGES=${PACKAGES:-python3,python3-venv,make,git,ca-certificates}
PREREQS=${PREREQS-build-essential python3-dev}
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
BASE=$CACHE/base-$SUITE
ROOT=$CACHE/run-$SUITE

say() { printf '\n=== %s\n' "$*"; }
die() { printf 'fresh-check: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot): run it with sudo"
[ "$(uname -m)" = x86_64 ] || die "the embedded server it checks exists only on Linux x86_64"

# The mirror apt on this machine uses (deb822 sources first, then the one-line format), else Debian's own.
mirror_in_use() {
    local uri
    uri=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 !~ /^\[/ && $2 ~ /\/debian\/?$/ {print $2; exit}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${MIRROR:-$(mirror_in_use)}

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap (apt-get)"
    apt-get install -y -qq debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
fi

MOUNTS=()
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
    MOUNTS=()
}
cleanup() {
    unmount_all
    if [ "${KEEP:-0}" != 1 ] && [ -d "$ROOT" ]; then rm -rf --one-file-system "$ROOT"; fi
}
trap cleanup EXIT

if [ "${1:-}" = --rebuild ] || [ ! -x "$BASE/usr/bin/python3" ]; then
    say "debootstrap $SUITE from $MIRROR into $BASE (packages: $PACKAGES)"
    rm -rf --one-file-system "$BASE"
    mkdir -p "$CACHE"
    started=$SECONDS
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$BASE" "$MIRROR" \
        || die "debootstrap of $SUITE from $MIRROR failed (see $BASE/debootstrap/debootstrap.log)"
    echo "debootstrap took $((SECONDS - started)) s"
fi

say "fresh copy of the $SUITE root at $ROOT"
rm -rf --one-file-system "$ROOT"
cp -a "$BASE" "$ROOT"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
say "git clone $REPO (HEAD $(git -C "$REPO" rev-parse --short HEAD))"
git clone -q "$REPO" "$ROOT/src/cvload"

for fs in proc sys dev dev/pts dev/shm; do
    mkdir -p "$ROOT/$fs"
    mount --bind "/$fs" "$ROOT/$fs"
    MOUNTS+=("$ROOT/$fs")
done
if [ -n "${PIP_CACHE:-}" ]; then
    say "pip cache: $PIP_CACHE (reused, not fresh)"
    mkdir -p "$PIP_CACHE" "$ROOT/root/.cache/pip"
    mount --bind "$PIP_CACHE" "$ROOT/root/.cache/pip"
    MOUNTS+=("$ROOT/root/.cache/pip")
fi

ROOT_ENV=(HOME=/root LANG=C.UTF-8 TERM=xterm-256color PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
in_root() {
    chroot "$ROOT" /usr/bin/env -i "${ROOT_ENV[@]}" bash -c "$1"
}

# Where this machine reaches the internet through a TLS proxy whose CA only the host trusts, carry those local CAs
# in and point pip at the system store (pip's own bundle lacks them); nothing else of the host's setup goes in.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    say "carrying this machine's local CA certificates: $(cd /usr/local/share/ca-certificates && echo *.crt)"
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    in_root "update-ca-certificates >/dev/null 2>&1"
    ROOT_ENV+=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
fi

say "system inside"
in_root '. /etc/os-release; echo "$PRETTY_NAME, $(python3 --version), $(make --version | head -1)";
         ls /usr/bin/python3.* | tr "\n" " "; echo'

if [ -n "$PREREQS" ]; then
    say "README prerequisites for Python 3.13: apt-get install $PREREQS"
    in_root "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PREREQS >/dev/null" \
        || die "apt-get install $PREREQS failed inside the root"
fi

status=0
for cmd in "make demo" "make test"; do
    say "$cmd (in /src/cvload)"
    started=$SECONDS
    if in_root "cd /src/cvload && $cmd"; then
        echo "--- $cmd: ok in $((SECONDS - started)) s"
    else
        echo "--- $cmd: FAILED (exit $?) after $((SECONDS - started)) s"
        status=1
    fi
done
unmount_all
say "fresh-check on $SUITE: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status

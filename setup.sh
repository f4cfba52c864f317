#!/bin/sh
# Set up nvmmpy for development on Debian/Ubuntu: system packages if missing, a .venv, the package.
# Quiet when all goes well: what apt and pip say goes to a log that is shown only if a step fails.
set -e
cd "$(dirname "$0")"
log=$(mktemp "${TMPDIR:-/tmp}/nvmmpy-setup.XXXXXX")
trap 'rm -f "$log"' EXIT

quiet() {  # run "$@" with its output in $log; on failure show that output and fail
    "$@" >"$log" 2>&1 && return 0
    status=$?
    cat "$log" >&2
    echo "setup.sh: failed (exit status $status): $*" >&2
    return "$status"
}

need=""
command -v python3 >/dev/null 2>&1 || need="$need python3"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need="$need python3-venv"
command -v as >/dev/null 2>&1 || need="$need binutils"                 # tests assemble tiny guests
command -v gcc >/dev/null 2>&1 || need="$need gcc"                     # bench/ builds its C baseline
[ -f /usr/include/linux/kvm.h ] || need="$need linux-libc-dev libc6-dev"  # KVM headers for it
peer=""
command -v qemu-system-x86_64 >/dev/null 2>&1 || peer="qemu-system-x86"  # nvmmpy bench's peer
if [ -n "$need$peer" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "setup.sh: installing$need $peer" >&2
    quiet $SUDO apt-get update -q
    [ -z "$need" ] || quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need
    [ -z "$peer" ] || quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $peer \
        || echo "setup.sh: could not install $peer: nvmmpy bench runs without its QEMU peer" >&2
fi
[ -x .venv/bin/python ] || quiet python3 -m venv .venv
quiet .venv/bin/python -m pip install --upgrade pip
quiet .venv/bin/python -m pip install -e '.[test,bench]'

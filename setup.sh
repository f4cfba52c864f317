#!/bin/sh
# Set up nvmmpy for development on Debian/Ubuntu: system packages if missing, a .venv, the package.
set -e
cd "$(dirname "$0")"
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
    $SUDO apt-get update -qq
    [ -z "$need" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
    [ -z "$peer" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $peer >/dev/null \
        || echo "setup.sh: could not install $peer: nvmmpy bench runs without its QEMU peer" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,bench]'

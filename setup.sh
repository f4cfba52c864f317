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
command -v iasl >/dev/null 2>&1 || need="$need acpica-tools"           # tests decode the ACPI tables with it
command -v dpkg-deb >/dev/null 2>&1 || need="$need dpkg"               # the Linux guest image is unpacked with it
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    >/dev/null 2>&1 || need="$need python3-dev"                        # the kvm driver's compiled exit loop
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
updated=""
if [ -n "$need" ]; then
    echo "setup.sh: installing$need" >&2
    quiet $SUDO apt-get update -q && updated=1
    quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need
fi
# The test and bench peer: QEMU 10 (vhost-user-snd-pci, virtio-sound-pci, qemu-storage-daemon) from Debian's
# bookworm-backports, enabled from this machine's own bookworm source entry. Never needed by nvmmpy run.
if ! qemu-system-x86_64 -device help 2>/dev/null | grep -q vhost-user-snd-pci; then
    echo "setup.sh: installing QEMU 10 from bookworm-backports (the tests' and the bench's peer)" >&2
    if quiet $SUDO python3 scripts/enable-backports.py && quiet $SUDO apt-get update -q && updated=1 &&
       quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
           -t bookworm-backports qemu-system-x86 qemu-utils; then :
    else
        echo "setup.sh: QEMU 10 could not be had: the vhost-user and QEMU peer tests will skip, saying so" >&2
    fi
fi
[ -x .venv/bin/python ] || quiet python3 -m venv .venv
quiet .venv/bin/python -m pip install --upgrade pip
quiet .venv/bin/python -m pip install -e '.[test,bench]'
# Build the compiled pieces now rather than at the first run (each falls back to Python, saying why, if it cannot).
.venv/bin/python -c 'from nvmmpy.drivers.kvm import exit_loop; from nvmmpy.drivers.unicorn import tbstop
for what, why in (("kvm exit loop", exit_loop.unavailable()), ("unicorn block hook", tbstop.unavailable())):
    why and print(f"setup.sh: no compiled {what} ({why}): nvmmpy runs, slower on exit-heavy guests")' >&2 || true
# A real guest for the tests and the bench: Debian's kernel, busybox and alsa-utils, built once into ~/.cache.
if ! .venv/bin/python -m nvmmpy.bench.linux_image --check >/dev/null 2>&1; then
    echo "setup.sh: building the Linux guest image (Debian's kernel, busybox, alsa-utils) into ~/.cache/nvmmpy" >&2
    { [ -n "$updated" ] || quiet $SUDO apt-get update -q; } &&
        quiet .venv/bin/python -m nvmmpy.bench.linux_image ||
        echo "setup.sh: the Linux guest image could not be built: the tests that boot Linux will skip, saying so" >&2
fi

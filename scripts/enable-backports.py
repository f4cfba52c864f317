#!/usr/bin/env python3
"""Enable Debian's bookworm-backports suite from this machine's own Debian source entries.

QEMU 10 (the test and bench peer: vhost-user-snd-pci, virtio-sound-pci, qemu-storage-daemon) comes
from bookworm-backports. The new entry reuses the URI and keyring of the machine's existing
`bookworm` entry, so no mirror host is written into the project. Prints what it did; exit 0 when
the suite is (now) configured, 1 with the reason when it cannot be.
"""
import glob
import os
import re
import sys

ROOT = "/"  # the tests point it at a fake /etc
TARGET = "etc/apt/sources.list.d/nvmmpy-bookworm-backports.sources"


def codename() -> str:
    try:
        with open(os.path.join(ROOT, "etc/os-release")) as f:
            return dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', f.read(), re.M)).get("VERSION_CODENAME", "")
    except OSError:
        return ""


def entries():
    """(uris, suites, components, signed_by) of every deb entry, deb822 and one-line."""
    for path in sorted(glob.glob(os.path.join(ROOT, "etc/apt/sources.list.d/*.sources"))):
        for stanza in re.split(r"\n\s*\n", open(path).read()):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                yield fields.get("uris", "").split(), fields.get("suites", "").split(), \
                    fields.get("components", "").split(), fields.get("signed-by", "")
    for path in [os.path.join(ROOT, "etc/apt/sources.list")] + sorted(glob.glob(os.path.join(ROOT, "etc/apt/sources.list.d/*.list"))):
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            m = re.match(r"^\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line)
            if m:
                opts = m.group(1) or ""
                sb = re.search(r"signed-by=(\S+?)\]?(\s|$)", opts)
                yield [m.group(2)], [m.group(3)], m.group(4).split(), sb.group(1) if sb else ""


def main() -> int:
    if codename() != "bookworm":
        print(f"enable-backports: this is not Debian 12 (bookworm): {codename() or 'unknown'}", file=sys.stderr)
        return 1
    found = list(entries())
    if any("bookworm-backports" in suites for _, suites, _, _ in found):
        return 0
    for uris, suites, comps, signed_by in found:
        if "bookworm" in suites and "main" in comps and uris:
            text = (f"# Written by nvmmpy's setup.sh from this machine's bookworm entry: QEMU 10 for the tests\n"
                    f"Types: deb\nURIs: {' '.join(uris)}\nSuites: bookworm-backports\nComponents: main\n")
            if signed_by:
                text += f"Signed-By: {signed_by}\n"
            with open(os.path.join(ROOT, TARGET), "w") as f:
                f.write(text)
            print(f"enable-backports: wrote /{TARGET} (from the bookworm entry for {uris[0]})", file=sys.stderr)
            return 0
    print("enable-backports: no Debian bookworm 'main' entry in /etc/apt to derive bookworm-backports from",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

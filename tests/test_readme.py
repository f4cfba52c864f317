"""Every example in the README runs as written: each python block and each shell command, or the
command is listed in NOT_RUN with the reason. A command added to the README is run here by default."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from harness import kvm_usable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)

NOT_RUN = {
    "./setup.sh && .venv/bin/python -m pytest":
        "it runs this test suite; it is what .ci/run runs (test_ci_runs_the_readme_test_command)",
    "nvmmpy bench --quick": "a whole benchmark run; tests/test_bench.py runs a quick selection end to end",
    "nvmmpy bench": "a whole full-mode benchmark run; writes nvmmpy-bench.json/.png and the profile in ~/.cache",
    "nvmmpy bench --workloads compute,pio-cpl3 --runners nvmmpy-kvm,qemu-kvm --json -":
        "a full-mode benchmark (5 repetitions, larger sizes); tests/test_bench.py covers --workloads/--runners",
    "nvmmpy bench --quick --workloads vhost-user":
        "boots Linux under QEMU 21 times (about 2 min); tests/test_vhost_user_bench.py runs its rng and sound jobs",
    "nvmmpy bench --quick --workloads linux-boot":
        "boots Linux 3 times on unicorn and 3 under QEMU (about 1 min); tests/test_linux_boot_bench.py checks the section",
    "pkgin install python311 py311-pip": "set-up on NetBSD or DragonFly (pkgsrc), not this OS",
    "python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]'": "the NetBSD/DragonFly set-up (setup.sh's job here)",
    ".venv/bin/python -m pytest tests/test_nvmm_*.py -q": "the NetBSD/DragonFly test run; here the suite itself runs them",
    ".venv/bin/python -m pytest -q": "runs this test suite (the NetBSD/DragonFly instructions)",
    "nvmmpy vhost-user sound --socket /tmp/snd.sock --sound out=wav:play.wav,in=tone:440 &":
        "a back-end for the QEMU line after it; tests/test_vhost_user_qemu.py runs the pair with Debian's kernel",
    "qemu-system-x86_64 -accel kvm -m 1G -kernel bzImage -append console=ttyS0 -nographic "
    "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem "
    "-chardev socket,id=snd0,path=/tmp/snd.sock -device vhost-user-snd-pci,chardev=snd0,controls=on":
        "needs your kernel and QEMU 10 (kvm here cannot run a kernel); tests/test_vhost_user_qemu.py boots "
        "Debian's under TCG against the back-end",
}

# What the python blocks print, keyed by a line that tells the block apart.
PY_EXPECT = {
    "from nvmmpy.vmm.vm import VirtualMachine": [b"Hello from nvmmpy guest!", b'cmdline="verbose"', b"exit 0 {"],
    "import nvmmpy": [b"port 0x10 <- b'A'"],
}


def _commands():
    out = []
    for lang, body in BLOCKS:
        if lang != "sh":
            continue
        for line in re.sub(r"\\\n\s*", "", body).splitlines():     # a trailing backslash continues a line
            cmd = re.sub(r"(^|\s+)#\s.*$", "", line).strip()  # comments: "  # ..." or a whole line
            if cmd:
                out.append(cmd)
    return out


def test_readme_has_only_sh_and_python_blocks():
    assert {lang for lang, _ in BLOCKS} == {"sh", "python"}, "a new kind of block needs a way to run it here"
    assert all(c in _commands() for c in NOT_RUN), "NOT_RUN lists a command the README no longer has"


def test_ci_runs_the_readme_test_command():
    first = [c for lang, body in BLOCKS if lang == "sh" for c in [body]][0].splitlines()
    assert first[0].startswith("./setup.sh && .venv/bin/nvmmpy run")
    test_cmd = re.sub(r"\s+#.*", "", first[1]).strip()
    assert test_cmd in NOT_RUN
    assert test_cmd in open(os.path.join(ROOT, ".ci", "run")).read().splitlines()


@pytest.fixture
def workdir(tmp_path):
    """Where a user would type the commands: a .venv (setup.sh's), and their own files the README
    names: my.elf (an ELF image), boot.bin (a flat 16-bit image), disk.img (a raw disk)."""
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "activate")):
        pytest.skip("no .venv here: setup.sh makes it")
    os.symlink(os.path.join(ROOT, ".venv"), tmp_path / ".venv")
    shutil.copy(os.path.join(ROOT, "vmm", "guests", "hello.elf"), tmp_path / "my.elf")
    # mov $0x501,%dx; mov $0,%al; out %al,(%dx) [debug-exit: exit status 0]; hlt
    (tmp_path / "boot.bin").write_bytes(bytes.fromhex("ba0105" "b000" "ee" "f4"))
    with open(tmp_path / "disk.img", "wb") as f:
        f.truncate(1 << 20)
    return tmp_path


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "COLUMNS")}
    venv_bin = os.path.join(ROOT, ".venv", "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


@pytest.mark.parametrize("cmd", _commands())
def test_readme_shell_command_runs(cmd, workdir):
    if cmd in NOT_RUN:
        pytest.skip(f"README command not run here: {NOT_RUN[cmd]}")
    if "--accel kvm" in cmd and not kvm_usable()[0]:
        pytest.skip(f"needs /dev/kvm: {kvm_usable()[1]}")
    if cmd.startswith("./setup.sh"):
        script, cwd = cmd, ROOT
    elif cmd == ". .venv/bin/activate":
        script, cwd = cmd + " && command -v nvmmpy", workdir
    else:  # the README: "The commands here and below assume that" (the activation)
        script, cwd = ". .venv/bin/activate\n" + cmd, workdir
    p = subprocess.run(["sh", "-c", script], cwd=cwd, env=_env(), capture_output=True, timeout=600)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, err[-3000:]
    assert "traceback" not in err.lower() and "warning" not in err.lower(), err[-3000:]
    if cmd == ". .venv/bin/activate":
        found = p.stdout.decode().strip()
        assert os.path.realpath(found) == os.path.realpath(os.path.join(workdir, ".venv", "bin", "nvmmpy")), found
    if " run" in cmd:   # a bundled guest exits through the debug-exit port; a Linux kernel powers off
        assert (": poweroff (exit status 0)" if "--kernel" in cmd else ": exit (exit status 0)") in err, err[-3000:]


@pytest.mark.parametrize("key", list(PY_EXPECT))
def test_readme_python_block_runs(key, tmp_path):
    code = [body for lang, body in BLOCKS if lang == "python" and re.search(rf"^{key}$", body, re.M)]
    assert len(code) == 1, f"{len(code)} python blocks have the line {key!r}"
    p = subprocess.run([sys.executable, "-c", code[0]], cwd=tmp_path, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    for want in PY_EXPECT[key]:
        assert want in p.stdout, (want, p.stdout[-2000:])


def test_every_python_block_is_run():
    python = [body for lang, body in BLOCKS if lang == "python"]
    assert len(python) == len(PY_EXPECT)
    for body in python:
        assert sum(bool(re.search(rf"^{k}$", body, re.M)) for k in PY_EXPECT) == 1, body[:200]


def test_setup_is_quiet_when_all_goes_well():
    """setup.sh says only what it does itself (installing system packages), none of pip's chatter."""
    p = subprocess.run(["./setup.sh"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    noise = [line for line in (p.stdout + p.stderr).splitlines() if not line.startswith("setup.sh: ")]
    assert noise == [], noise[:10]

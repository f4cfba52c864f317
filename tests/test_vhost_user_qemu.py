"""Our vhost-user back-ends (`python -m nvmmpy.cli vhost-user ...`, a subprocess) serving QEMU 10,
driven by Linux's own virtio drivers in the cached Debian guest (bench/linux_image.py).

Skipped, saying which, where QEMU >= 10 with the vhost-user devices or the guest image is missing.
Each test boots the guest once (a few seconds under TCG).
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from harness import random_wav
from nvmmpy.bench import qemu_linux
from nvmmpy.devices.virtio.sound.wav import WavReader

pytestmark = [pytest.mark.skipif(qemu_linux.skip_reason() is not None, reason=str(qemu_linux.skip_reason())), pytest.mark.slow]


class Backend:
    """`nvmmpy vhost-user KIND ... --json` as a subprocess; events read from its stdout."""

    def __init__(self, tmp_path, kind, *args):
        self.socket = str(tmp_path / f"{kind}.sock")
        self.proc = subprocess.Popen([sys.executable, "-m", "nvmmpy.cli", "vhost-user", kind, "--socket", self.socket,
                                      "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=str(tmp_path))
        self.kind_name = {"sound": "snd"}.get(kind, kind)
        self.events = []
        self._buf = b""

    def wait_listening(self):
        ev = self.next_event(30)
        assert ev["event"] == "listening", ev

    def next_event(self, timeout=60, kind=None):
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if not ev.get("_seen") and (kind is None or ev["event"] == kind):
                    ev["_seen"] = True
                    return ev
            left = deadline - time.monotonic()
            fd = self.proc.stdout.fileno()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no {kind or 'event'} from the back-end in {timeout} s; "
                                     f"events {self.events}, stderr {self.stop()[1]}")
            chunk = os.read(fd, 65536)     # raw: a buffered readline would hide lines from select
            if not chunk:
                raise AssertionError(f"the back-end exited: {self.proc.wait()} {self.proc.stderr.read()!r}")
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            self.events += [json.loads(line) for line in lines if line.strip()]

    def device(self, extra=""):
        return qemu_linux.vhost_user_device(self.kind_name, self.socket, extra=extra)

    def stop(self):
        """SIGTERM: it must exit 0 and remove its socket. Killed if it does not exit in 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, err.decode(errors="replace")


@pytest.fixture
def backend(tmp_path):
    """start(kind, *args) -> a listening Backend. Every one started is stopped at teardown, however
    the test ended (killed if SIGTERM does not end it), before any of their exits is checked."""
    started = []

    def start(kind, *args):
        b = Backend(tmp_path, kind, *args)
        started.append(b)           # before anything about it can fail
        b.wait_listening()
        return b
    yield start
    ended = [(b, *b.stop()) for b in started]
    for b, rc, err in ended:
        assert rc == 0, err
        assert not os.path.exists(b.socket)


def boot(script, devices, files=None, timeout=120):
    out = qemu_linux.boot(script, devices, files, timeout=timeout)
    assert qemu_linux.script_status(out) == 0, out[-3000:]
    return out


def test_rng_serves_hwrng(backend):
    b = backend("rng")
    out = boot("cat /sys/class/misc/hw_random/rng_current\n"
               "dd if=/dev/hwrng of=/tmp/r bs=4096 count=1 2>/dev/null\n"
               "echo got $(wc -c < /tmp/r) bytes, $(od -An -tx1 /tmp/r | tr ' ' '\\n' | sort -u | wc -l) distinct\n",
               b.device())
    assert "virtio_rng" in out
    assert "got 4096 bytes" in out
    assert int(out.split("bytes, ")[1].split()[0]) > 200      # all 256 values nearly
    b.next_event(kind="connected")
    gone = b.next_event(kind="disconnected")
    assert gone["stats"]["requests"] >= 1 and gone["stats"]["bytes"] >= 4096


PATTERN_SCRIPT = """
i=0; while [ $i -lt 32768 ]; do printf 'vhost-user-blk-%016d\\n' $i; i=$((i+1)); done > /tmp/pat
echo pattern $(wc -c < /tmp/pat)
"""


def _pattern() -> bytes:
    return b"".join(b"vhost-user-blk-%016d\n" % i for i in range(32768))


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_blk_write_sync_read_back(backend, tmp_path, ring):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(4 << 20))
    b = backend("blk", str(img))
    out = boot(PATTERN_SCRIPT + """
cat /sys/block/vda/size /sys/block/vda/ro /sys/block/vda/queue/write_cache
dd if=/tmp/pat of=/dev/vda bs=64k seek=1 conv=fsync 2>/dev/null || echo WRITE FAILED
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=64k skip=1 count=16 2>/dev/null
cmp /tmp/pat /tmp/back && echo READ BACK SAME
""", b.device(extra=f"num-queues=1,packed={'on' if ring == 'packed' else 'off'}"))
    assert "pattern 1048576" in out and "READ BACK SAME" in out and "WRITE FAILED" not in out
    assert "\n8192\r\n0\r\nwrite back" in out.replace("\r\r", "\r")
    data = img.read_bytes()
    assert data[64 << 10:(64 << 10) + (1 << 20)] == _pattern()          # the host image holds it
    assert data[:64 << 10] == bytes(64 << 10)
    gone = b.next_event(kind="disconnected")
    assert gone["ring"] == ring
    assert gone["stats"]["bytes_written"] >= 1 << 20 and gone["stats"]["flushes"] >= 1   # it knew to flush


def test_blk_read_only_refuses_writes(backend, tmp_path):
    img = tmp_path / "ro.img"
    img.write_bytes(b"\xA5" * (1 << 20))
    b = backend("blk", f"{img},ro")
    out = boot("cat /sys/block/vda/ro\n"
               "dd if=/dev/zero of=/dev/vda bs=4k count=1 conv=fsync 2>/dev/null && echo WRITE WORKED "
               "|| echo WRITE REFUSED\n"
               "dd if=/dev/vda bs=4k count=1 2>/dev/null | od -An -tx1 | head -1\n", b.device())
    assert "WRITE REFUSED" in out and "WRITE WORKED" not in out
    assert " a5 a5 a5" in out
    assert img.read_bytes() == b"\xA5" * (1 << 20)


# --- sound -------------------------------------------------------------------------------------

SOUND_SPEC = "out=wav:play.wav,channels=1-8,in=wav:src.wav,channels=1-8"


def _sink_frames(path):
    with WavReader(path) as r:
        return r.channels, r.rate, r.read(r.frames)


@pytest.mark.parametrize("channels,rate,width,aplay_fmt,seconds", [
    (2, 48000, 2, "S16_LE", 2.0),      # the classic
    (1, 8000, 1, "U8", 0.5),
    (2, 44100, 2, "S16_LE", 0.5),
    (6, 48000, 4, "S32_LE", 0.5),
    (2, 192000, 2, "S16_LE", 0.25),
    (2, 384000, 2, "S16_LE", 0.25),
], ids=["48k-s16-stereo-2s", "8k-u8-mono", "44k1-s16", "48k-s32-6ch", "192k", "384k"])
def test_aplay_reaches_the_wav_sink_bit_exact(backend, tmp_path, channels, rate, width, aplay_fmt, seconds):
    src, _ = random_wav(2, 48000, 2, 4800, seed=9)
    (tmp_path / "src.wav").write_bytes(src)
    wav, data = random_wav(channels, rate, width, int(rate * seconds))
    b = backend("sound", "--sound", SOUND_SPEC)
    out = boot("amixer -c 0 controls\naplay -D hw:0,0 /in.wav; echo aplay=$?\n",
               b.device(extra="controls=on"), files={"in.wav": wav})
    assert "aplay=0" in out, out[-2000:]
    assert "PCM Playback Volume" in out and "PCM Playback Switch" in out     # amixer lists our controls
    b.next_event(kind="disconnected")
    ch, r, got = _sink_frames(tmp_path / "play.wav")
    assert (ch, r) == (channels, rate)
    assert len(got) >= len(data), f"{(len(data) - len(got)) // (channels * width)} frames missing"
    assert got[:len(data)] == data                                       # every frame, the last one too
    # aplay pads its last period with silence (that too is what the guest played): nothing else
    pad = got[len(data):]
    assert pad == (b"\x80" if width == 1 else b"\0") * len(pad) and len(pad) < 16384 * channels * width


def test_arecord_returns_the_wav_source_frames(backend, tmp_path):
    src, data = random_wav(2, 48000, 2, 48000, seed=5)     # 1 s
    (tmp_path / "src.wav").write_bytes(src)
    b = backend("sound", "--sound", SOUND_SPEC)
    out = boot("arecord -l | grep -i card\n"
               "arecord -D hw:0,0 -f S16_LE -r 48000 -c 2 -s 24000 -t raw /tmp/cap.raw; echo arecord=$?\n"
               "od -An -tx1 -v /tmp/cap.raw | tr -d ' \\n'; echo\n",
               b.device(extra="controls=on"))
    assert "arecord=0" in out, out[-2000:]
    hexline = next(line.strip() for line in out.splitlines() if len(line.strip()) >= 96000)
    assert bytes.fromhex(hexline) == data[:96000]                   # 24000 frames, as the file has them


def test_qemu_killed_mid_stream_then_a_new_one_plays(backend, tmp_path):
    """kill -9 of QEMU during aplay: the back-end stays, the WAV stays valid, the next QEMU plays."""
    (tmp_path / "src.wav").write_bytes(random_wav(2, 48000, 2, 4800)[0])
    long_wav, long_data = random_wav(2, 48000, 2, 48000 * 20, seed=3)
    b = backend("sound", "--sound", SOUND_SPEC)
    q = qemu_linux.start("echo PLAYING; aplay -D hw:0,0 /in.wav\n", b.device(extra="controls=on"), files={"in.wav": long_wav},
                directory=str(tmp_path))
    try:
        b.next_event(kind="connected")
        seen = b""
        deadline = time.monotonic() + 60
        while b"PLAYING" not in seen and time.monotonic() < deadline:
            if select.select([q.stdout], [], [], 1)[0]:
                seen += os.read(q.stdout.fileno(), 4096)
        assert b"PLAYING" in seen
        time.sleep(1.5)
    finally:
        q.kill()            # the kill -9 under test, and the clean-up if anything above failed
        qemu_linux.finish(q)
    gone = b.next_event(kind="disconnected")
    assert "closed" in gone["reason"]
    ch, r, first = _sink_frames(tmp_path / "play.wav")      # valid after the kill
    assert (ch, r) == (2, 48000) and 0 < len(first) < len(long_data) and long_data.startswith(first)
    # a new QEMU, the same back-end
    wav, data = random_wav(2, 48000, 2, 24000, seed=4)
    out = boot("aplay -D hw:0,0 /in.wav; echo aplay=$?\n", b.device(extra="controls=on"), files={"in.wav": wav})
    assert "aplay=0" in out
    b.next_event(kind="disconnected")
    ch, r, both = _sink_frames(tmp_path / "play.wav")
    assert both == first + data            # appended to the same file: same parameters


def test_guest_driver_rebind_restarts_the_rings(backend, tmp_path):
    """rmmod/insmod virtio_snd: QEMU stops the rings (GET_VRING_BASE), the device resets, the new
    driver starts them again; both plays land in the sink."""
    (tmp_path / "src.wav").write_bytes(random_wav(2, 48000, 2, 4800)[0])
    wav, data = random_wav(2, 48000, 2, 24000, seed=6)
    b = backend("sound", "--sound", SOUND_SPEC)
    out = boot("aplay -D hw:0,0 /in.wav; echo aplay1=$?\n"
               "rmmod virtio_snd && insmod /lib/modules/virtio_snd.ko && echo rebound\n"
               "aplay -D hw:0,0 /in.wav; echo aplay2=$?\n", b.device(extra="controls=on"), files={"in.wav": wav})
    assert "aplay1=0" in out and "rebound" in out and "aplay2=0" in out, out[-2000:]
    b.next_event(kind="disconnected")
    assert _sink_frames(tmp_path / "play.wav")[2] == data + data


def _s16(data: bytes):
    from array import array
    a = array("h", data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def test_amixer_volume_and_mute_change_the_samples(backend, tmp_path):
    """`amixer cset` in the guest: volume 88 of 0..100 is -6 dB on the control's dB scale (-50 dB at
    0, 0.5 dB steps), so every sample is scaled by 10^(-6/20) (rounded, within one LSB); the switch
    off plays silence. Both plays append to the same WAV (same parameters)."""
    (tmp_path / "src.wav").write_bytes(random_wav(2, 48000, 2, 4800)[0])
    wav, data = random_wav(2, 48000, 2, 24000, seed=11)        # 0.5 s: four of aplay's periods, no padding
    b = backend("sound", "--sound", SOUND_SPEC)
    out = boot("amixer -c 0 cset name='PCM Playback Volume' 88 | grep ': values'\n"
               "aplay -D hw:0,0 /in.wav; echo aplay1=$?\n"
               "amixer -c 0 cset name='PCM Playback Switch' off | grep ': values'\n"
               "aplay -D hw:0,0 /in.wav; echo aplay2=$?\n", b.device(extra="controls=on"), files={"in.wav": wav})
    assert "aplay1=0" in out and "aplay2=0" in out, out[-2000:]
    assert ": values=88" in out and ": values=off" in out
    b.next_event(kind="disconnected")
    got = _sink_frames(tmp_path / "play.wav")[2]
    assert len(got) >= 2 * len(data)
    gain = 10 ** (-6 / 20)
    want, have = _s16(data), _s16(got[:len(data)])
    assert max(abs(h - round(w * gain)) for w, h in zip(want, have)) <= 1
    assert got[len(data):] == bytes(len(got) - len(data))             # muted (and aplay's padding)


def test_guest_that_stops_feeding_gets_an_xrun_and_recovers(backend, tmp_path):
    """aplay reads a pipe that stalls for 1 s after 0.5 s of audio: the device runs dry, the guest
    sees the XRUN (aplay: "underrun!!!"), prepares and goes on; the sink holds both halves, nothing
    lost or repeated, and the device counted the xrun."""
    (tmp_path / "src.wav").write_bytes(random_wav(2, 48000, 2, 4800)[0])
    _, data = random_wav(2, 48000, 2, 48000, seed=12)
    b = backend("sound", "--sound", SOUND_SPEC)
    out = boot("(head -c 96000 /in.raw; sleep 1; tail -c 96000 /in.raw) | "
               "aplay -D hw:0,0 -t raw -f S16_LE -r 48000 -c 2 2>&1; echo aplay=$?\n",
               b.device(extra="controls=on"), files={"in.raw": data})
    assert "aplay=0" in out and "underrun!!!" in out, out[-2000:]
    gone = b.next_event(kind="disconnected")
    assert gone["stats"]["streams"][0]["xruns"] >= 1
    got = _sink_frames(tmp_path / "play.wav")[2]
    assert got[:len(data)] == data and got[len(data):] == bytes(len(got) - len(data))

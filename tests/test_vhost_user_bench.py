"""bench/vhost_user.py's sound figure: frames delivered are the clip's frames found at the start of the
sink WAV byte for byte (QEMU's own device drops the last few hundred; ours must deliver all)."""
import struct

from nvmmpy.bench import vhost_user


def _wav(data: bytes) -> bytes:
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 2, 48000,
                       192000, 4, 16, b"data", len(data)) + data


def test_frames_delivered_counts_the_exact_prefix(tmp_path):
    wav, clip = vhost_user._clip()
    assert wav[44:] == clip and len(clip) == 4 * int(vhost_user.CLIP_RATE * vhost_user.CLIP_SECONDS)
    p = tmp_path / "s.wav"
    p.write_bytes(_wav(clip + bytes(400)))                 # all of it, then aplay's silence padding
    assert vhost_user._frames_delivered(str(p), clip) == len(clip) // 4
    p.write_bytes(_wav(clip[:-300 * 4]))                   # the last 300 frames dropped
    assert vhost_user._frames_delivered(str(p), clip) == len(clip) // 4 - 300
    bad = bytearray(clip)
    bad[4000] ^= 1                                         # one wrong sample in frame 1000
    p.write_bytes(_wav(bytes(bad)))
    assert vhost_user._frames_delivered(str(p), clip) == 1000
    assert vhost_user._frames_delivered(str(tmp_path / "missing.wav"), clip) == 0

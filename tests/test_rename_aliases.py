"""scripts/rename_aliases.py: renames only the alias and the names that are it, refuses what it
cannot rename safely, and is a no-op on a file already renamed."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("rename_aliases", os.path.join(ROOT, "scripts", "rename_aliases.py"))
rename_aliases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rename_aliases)

SOURCE = '''from nvmmpy import constants as C
from nvmmpy.devices.virtio.sound import formats as F, constants as S


def f(x):
    """C.X64_STATE_ALL in a docstring stays."""
    label = "C.PROT_READ"  # and in a comment: C.PROT_EXEC
    return x.C, C.PROT_READ | C.PROT_WRITE, F.FORMATS[S.PCM_FMT_S16], f"{C.VCPU_EXIT_IO}"
'''


def rename(tmp_path, text, name="x.py"):
    path = tmp_path / name
    path.write_text(text)
    edits, problems, renames = rename_aliases.plan(str(path), text)
    return rename_aliases.apply(text, edits), problems, renames


def test_renames_the_alias_and_its_uses_only(tmp_path):
    out, problems, renames = rename(tmp_path, SOURCE)
    assert not problems
    assert sorted(renames) == [("C", "nvmm"), ("F", "formats"), ("S", "snd")]
    assert "from nvmmpy import constants as nvmm\n" in out
    assert "from nvmmpy.devices.virtio.sound import formats, constants as snd\n" in out
    assert "return x.C, nvmm.PROT_READ | nvmm.PROT_WRITE, formats.FORMATS[snd.PCM_FMT_S16], " \
           'f"{nvmm.VCPU_EXIT_IO}"' in out
    assert '"""C.X64_STATE_ALL in a docstring stays."""' in out
    assert 'label = "C.PROT_READ"  # and in a comment: C.PROT_EXEC' in out
    again, problems, renames = rename(tmp_path, out)
    assert again == out and not problems and not renames


@pytest.mark.parametrize("body, why", [
    ("def g(C):\n    return C\n", "bound 2 times"),
    ("nvmm = 1\nprint(C.X, nvmm)\n", "nvmm is already a name"),
])
def test_refuses_what_it_cannot_rename_safely(tmp_path, body, why):
    text = "from nvmmpy import constants as C\n" + body
    out, problems, renames = rename(tmp_path, text)
    assert out == text and not renames
    assert len(problems) == 1 and why in problems[0]


def test_relative_imports_resolve_through_the_package_dirs():
    path = os.path.join(ROOT, "devices", "virtio", "sound", "pcm.py")
    assert rename_aliases.package_of(path) == "nvmmpy.devices.virtio.sound"
    text = "from .. import constants as V\nfrom . import constants as C\nV.X, C.Y\n"
    edits, problems, renames = rename_aliases.plan(path, text)
    assert not problems and sorted(renames) == [("C", "snd"), ("V", "virtio")]

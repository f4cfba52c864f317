"""scripts/enable-backports.py: bookworm-backports from the machine's own Debian entry (deb822 or
one-line), never a host of its own; nothing done off Debian 12 or when the suite is there."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def eb(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("enable_backports", os.path.join(ROOT, "scripts", "enable-backports.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
    monkeypatch.setattr(mod, "ROOT", str(tmp_path))
    return mod, tmp_path


def test_from_a_deb822_entry(eb):
    mod, root = eb
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert mod.main() == 0
    text = (root / mod.TARGET).read_text()
    assert "URIs: http://mirror.example/debian\n" in text and "Suites: bookworm-backports\n" in text
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in text
    assert mod.main() == 0 and (root / mod.TARGET).read_text() == text   # already there: unchanged


def test_from_a_one_line_entry_and_refusals(eb):
    mod, root = eb
    (root / "etc/apt/sources.list").write_text("deb [signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n")
    assert mod.main() == 0
    text = (root / mod.TARGET).read_text()
    assert "URIs: http://m.example/debian\n" in text and "Signed-By: /k.gpg\n" in text
    (root / mod.TARGET).unlink()
    (root / "etc/apt/sources.list").write_text("deb http://m.example/debian bookworm contrib\n")   # no main
    assert mod.main() == 1 and not (root / mod.TARGET).exists()
    (root / "etc/os-release").write_text("VERSION_CODENAME=trixie\n")
    assert mod.main() == 1

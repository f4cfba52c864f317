"""The layers import only downwards, and everything installs under the one name `nvmmpy`.

    cli        the `nvmmpy` command         may import every layer below
    bench      benchmarks                   vmm, devices, core, emulator
    vmm        the machine                  devices, core, emulator
    devices    device models                only devices (GuestMemory + IrqLine are theirs)
    core       nvmmpy/: the libnvmm API     core, emulator
    emulator   x86 decode and emulation     only emulator

Read from the source with `ast`, so an import hidden in a function counts too. Nothing shipped
imports the tests or puts them on sys.path.
"""
import ast
import os
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"core": "nvmmpy", "emulator": "emulator", "devices": "devices", "vmm": "vmm", "bench": "bench", "cli": "cli"}
ALLOWED = {
    "emulator": {"emulator"},
    "core": {"core", "emulator"},
    "devices": {"devices"},
    "vmm": {"vmm", "devices", "core", "emulator"},
    "bench": {"bench", "vmm", "devices", "core", "emulator"},
    "cli": {"cli", "bench", "vmm", "devices", "core", "emulator"},
}
# `python -m nvmmpy` starts the command line: the package's __main__ belongs to the cli layer.
LAYER_OF_FILE = {os.path.join("nvmmpy", "__main__.py"): "cli"}
TEST_MODULES = {os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, "tests")) if f.endswith(".py")}


def layer_of(module: str) -> str | None:
    """The layer an installed module name belongs to, or None for anything outside nvmmpy."""
    parts = module.split(".")
    if parts[0] != "nvmmpy":
        return None
    if len(parts) > 1 and parts[1] in FOLDERS and parts[1] != "nvmmpy":
        return parts[1]
    return "core"


def shipped_files():
    for layer, folder in FOLDERS.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    yield layer, folder, os.path.join(dirpath, f)


def module_name(layer: str, folder: str, path: str) -> str:
    rel = os.path.relpath(path, os.path.join(ROOT, folder))[:-3].replace(os.sep, ".")
    base = "nvmmpy" if layer == "core" else f"nvmmpy.{layer}"
    return base if rel == "__init__" else f"{base}.{rel.removesuffix('.__init__')}"


def imports_of(path: str, module: str):
    """(line, imported module) for every import in the file, relative ones resolved."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target
            for a in node.names:  # `from nvmmpy import vmm` imports a layer too
                yield node.lineno, f"{target}.{a.name}"


def test_layers_import_only_downwards():
    wrong = []
    for layer, folder, path in shipped_files():
        module = module_name(layer, folder, path)
        for line, target in imports_of(path, module):
            other = layer_of(target)
            own = LAYER_OF_FILE.get(os.path.relpath(path, ROOT), layer)
            if other is not None and other not in ALLOWED[own]:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line} ({own}) imports {target} ({other})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_old_top_level_names_are_gone():
    """`vmm`, `devices`, `emulator`, `bench` as top-level imports would collide with other projects."""
    wrong = []
    for layer, folder, path in list(shipped_files()) + [("tests", "tests", os.path.join(ROOT, "tests", f))
                                                        for f in os.listdir(os.path.join(ROOT, "tests"))
                                                        if f.endswith(".py")]:
        for line, target in imports_of(path, "tests.x" if layer == "tests" else module_name(layer, folder, path)):
            if target.split(".")[0] in ("vmm", "devices", "emulator", "bench", "cli"):
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_nothing_shipped_imports_the_tests():
    wrong = []
    for layer, folder, path in shipped_files():
        src = open(path, encoding="utf-8").read()
        for line, target in imports_of(path, module_name(layer, folder, path)):
            if target.split(".")[0] in TEST_MODULES or target.split(".")[0] == "tests":
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line} imports test code {target}")
        if re.search(r"sys\.path.*tests", src):
            wrong.append(f"{os.path.relpath(path, ROOT)} puts tests/ on sys.path")
    assert not wrong, "\n".join(wrong)


def test_the_layering_checker_catches_an_upward_import(tmp_path):
    """The checker itself: an import from devices into vmm, written relatively or absolutely, is seen."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from nvmmpy.vmm.vm import VirtualMachine\nfrom ... import vmm\n")
    found = [t for _, t in imports_of(str(f), "nvmmpy.devices.virtio.x")]
    assert "nvmmpy.vmm.vm" in found and "nvmmpy.vmm" in found
    assert layer_of("nvmmpy.vmm.vm") == "vmm" and "vmm" not in ALLOWED["devices"]
    assert layer_of("nvmmpy.machine") == "core" and layer_of("os") is None


def test_every_package_folder_is_installed():
    conf = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = set()
    for layer, folder, path in shipped_files():
        if os.path.basename(path) == "__init__.py":
            found.add(module_name(layer, folder, path))
    assert listed == found
    assert conf["package-dir"] == {("nvmmpy" if l == "core" else f"nvmmpy.{l}"): f for l, f in FOLDERS.items()}


@pytest.mark.slow
def test_wheel_has_one_top_level_name(tmp_path):
    """Build the wheel as pip would and look inside: one top-level package, the guests included."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), ROOT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("nvmmpy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"nvmmpy"}
    assert "nvmmpy/vmm/guests/hello.elf" in names and "nvmmpy/devices/virtio/mmio.py" in names
    assert "nvmmpy/cli/main.py" in names and "nvmmpy/emulator/x86emu.py" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "nvmmpy = nvmmpy.cli.entry:program" in zipfile.ZipFile(wheel).read(entry[0]).decode()


# Files the lead is editing while the alias rename landed: scripts/rename_aliases.py renames them
# once they are merged, and then this list is emptied.
ONE_LETTER_ALIAS_PENDING = set()


def one_letter_aliases(path: str):
    """(line, `name as X`) for every import in the file that binds a one-letter name."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.asname and len(a.asname) == 1:
                    yield node.lineno, f"{a.name} as {a.asname}"


def test_no_one_letter_module_aliases():
    """`C` once meant three different modules: modules go by descriptive names (docs/architecture.md,
    "Names"); scripts/rename_aliases.py applies the scheme."""
    files = [path for _, _, path in shipped_files()]
    for folder in ("tests", "scripts", "guests"):
        files += [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, folder))
                  for f in fs if f.endswith(".py")]
    wrong = [f"{os.path.relpath(path, ROOT)}:{line}: {what}" for path in files
             if os.path.relpath(path, ROOT) not in ONE_LETTER_ALIAS_PENDING
             for line, what in one_letter_aliases(path)]
    assert not wrong, "one-letter import aliases (run scripts/rename_aliases.py):\n" + "\n".join(wrong)
    still = {f for f in ONE_LETTER_ALIAS_PENDING if list(one_letter_aliases(os.path.join(ROOT, f)))}
    assert still == ONE_LETTER_ALIAS_PENDING, f"renamed now, take off the pending list: {ONE_LETTER_ALIAS_PENDING - still}"


def test_the_alias_checker_sees_both_import_forms(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import numpy as N\nfrom nvmmpy import constants as C\nfrom os import path as p_\n")
    assert [w for _, w in one_letter_aliases(str(f))] == ["numpy as N", "constants as C"]

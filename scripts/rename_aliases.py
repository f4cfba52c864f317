#!/usr/bin/env python3
"""Replace one-letter module aliases (`from nvmmpy import constants as C`) by descriptive names.

    python3 scripts/rename_aliases.py [--check] [--exclude GLOB ...] [PATH ...]

The scheme (docs/architecture.md, "Names"): a constants module goes by what its numbers are the
numbers of, every other module by its own name:

    nvmmpy.constants                      nvmm    (libnvmm's API: exits, events, state bits)
    nvmmpy.devices.virtio.constants       virtio  (the VIRTIO spec's numbers)
    nvmmpy.devices.virtio.sound.constants snd     (virtio-sound's numbers)
    nvmmpy.emulator.arch                  x86     (the SDM's bits, vectors, page size)
    anything else                         its own name: `formats as F` -> `formats`

Re-runnable: files already renamed are left as they are, so it can be run again over files that
changed meanwhile. Safe by construction: it reads each file with `ast` and rewrites only the
import's alias and the Name nodes that are that alias (never strings, comments or attributes), and
it refuses a file, saying why, where the old name is bound anything else (a parameter, a local) or
the new name is already taken. Comments and docstrings that mention the old alias are listed.
With --check it writes nothing and exits 1 if any file would change (or was refused).
PATH defaults to every Python file git tracks; --exclude takes fnmatch patterns on the path
relative to the repository root (e.g. 'nvmmpy/drivers/unicorn/*').
"""
import argparse
import ast
import fnmatch
import io
import os
import re
import subprocess
import sys
import tokenize

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {
    "nvmmpy.constants": "nvmm",
    "nvmmpy.devices.virtio.constants": "virtio",
    "nvmmpy.devices.virtio.sound.constants": "snd",
    "nvmmpy.emulator.arch": "x86",
}


def package_dirs() -> dict:
    """Installed package -> repository folder, from pyproject.toml (setuptools' package-dir)."""
    if tomllib is not None:
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            return tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {"nvmmpy": "nvmmpy", "nvmmpy.emulator": "emulator", "nvmmpy.devices": "devices",
            "nvmmpy.vmm": "vmm", "nvmmpy.bench": "bench", "nvmmpy.cli": "cli"}


def package_of(path: str) -> str | None:
    """The installed package a file sits in (for relative imports), or None outside them."""
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    best = None
    for pkg, folder in package_dirs().items():
        if rel.startswith(folder + os.sep) and (best is None or len(folder) > len(best[1])):
            best = (pkg, folder)
    if best is None:
        return None
    sub = os.path.dirname(os.path.relpath(rel, best[1]))
    return best[0] + ("." + sub.replace(os.sep, ".") if sub else "")


def imported_module(node, alias, package) -> str:
    """The full name of what `alias` (of import node `node`) imports."""
    if isinstance(node, ast.Import):
        return alias.name
    base = node.module or ""
    if node.level:
        if package is None:
            return alias.name
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return f"{base}.{alias.name}"


def new_name(module: str) -> str:
    return NAMES.get(module, module.rpartition(".")[2])


def bindings(tree) -> dict:
    """name -> how many times the file binds it (assignments, parameters, defs, imports, ...)."""
    seen = {}

    def add(name):
        seen[name] = seen.get(name, 0) + 1
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            add(node.id)
        elif isinstance(node, ast.arg):
            add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                add(a.asname or a.name.partition(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for n in node.names:
                add(n)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            add(node.name)
    return seen


def used_names(tree) -> set:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | set(bindings(tree))


def plan(path: str, source: str):
    """([(line, col_start, col_end, old, new)], [problem], [(old, new)]) for one file."""
    tree = ast.parse(source, path)
    package = package_of(path)
    binds = bindings(tree)
    taken = used_names(tree)
    edits, problems, renames = [], [], []
    lines = source.splitlines(keepends=True)

    def char_col(lineno, byte_col):
        return len(lines[lineno - 1].encode()[:byte_col].decode())
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for a in node.names:
            if not a.asname or len(a.asname) != 1:
                continue
            old, new = a.asname, new_name(imported_module(node, a, package))
            if binds.get(old, 0) != 1:
                problems.append(f"{path}:{node.lineno}: {old} is bound {binds.get(old, 0)} times; rename it by hand")
                continue
            if new in taken:
                problems.append(f"{path}:{node.lineno}: {old} -> {new}: {new} is already a name in this file")
                continue
            if a.end_lineno != a.lineno:
                problems.append(f"{path}:{node.lineno}: the alias spans lines; rename it by hand")
                continue
            # the alias: the last word of `name as X`
            start, end = char_col(a.lineno, a.col_offset), char_col(a.end_lineno, a.end_col_offset)
            text = lines[a.lineno - 1][start:end]
            m = re.search(r"\bas\s+(\w)$", text)
            if not m:
                problems.append(f"{path}:{a.lineno}: cannot find `as {old}` in {text!r}")
                continue
            if a.name.rpartition(".")[2] == new and isinstance(node, ast.ImportFrom):
                edits.append((a.lineno, start + len(a.name), end, old, ""))   # `formats as F` -> `formats`
            else:
                edits.append((a.lineno, start + m.start(1), end, old, new))
            for n in ast.walk(tree):
                if isinstance(n, ast.Name) and n.id == old:
                    s, e = char_col(n.lineno, n.col_offset), char_col(n.end_lineno, n.end_col_offset)
                    if lines[n.lineno - 1][s:e] != old:
                        problems.append(f"{path}:{n.lineno}: {old} is not where ast says (f-string?); by hand")
                        break
                    edits.append((n.lineno, s, e, old, new))
            else:
                renames.append((old, new))
                taken.add(new)
                continue
            edits = [x for x in edits if x[3] != old]   # all or nothing for this alias
    return edits, problems, renames


def apply(source: str, edits) -> str:
    lines = source.splitlines(keepends=True)
    for lineno, s, e, _, new in sorted(edits, reverse=True):
        line = lines[lineno - 1]
        lines[lineno - 1] = line[:s] + new + line[e:]
    return "".join(lines)


def mentions(source: str, renames) -> list:
    """(line, old) for comments and strings that still say `OLD.NAME` after the rename."""
    olds = {old for old, _ in renames}
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            for old in olds:
                if re.search(rf"(?<![\w.]){old}\.[A-Z_a-z]", tok.string):
                    out.append((tok.start[0], old))
    return out


def python_files(paths) -> list:
    if paths:
        files = []
        for p in paths:
            if os.path.isdir(p):
                files += [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs if f.endswith(".py")]
            else:
                files.append(p)
        return sorted(files)
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [os.path.join(ROOT, f) for f in out.stdout.split()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="files or folders (default: every Python file git tracks)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    ap.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="leave files matching this (path relative to the repository root)")
    args = ap.parse_args(argv)
    changed, refused = [], []
    for path in python_files(args.paths):
        rel = os.path.relpath(os.path.abspath(path), ROOT)
        if any(fnmatch.fnmatch(rel, g) for g in args.exclude):
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        edits, problems, renames = plan(path, source)
        for p in problems:
            print(f"refused: {p}", file=sys.stderr)
        refused += problems
        if not edits:
            continue
        changed.append(rel)
        result = apply(source, edits)
        ast.parse(result, path)   # never write a file that no longer parses
        print(f"{'would rename' if args.check else 'renamed'} in {rel}: "
              + ", ".join(f"{o} -> {n}" for o, n in renames))
        for line, old in mentions(result, renames):
            print(f"  {rel}:{line}: a comment or string still says {old}.", file=sys.stderr)
        if not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(result)
    if args.check and (changed or refused):
        return 1
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())

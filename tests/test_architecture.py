"""The folders are the architecture: data flows ``kernels → models → core (text, data)
→ runtime → training → export → eval/quickstart/info → cli``, never back.

Every module's imports (top-level and inside functions) are read with ``ast``; a module
may import only its own layer or a lower one. ``import vnmini.kernels`` and
``import vnmini.models`` stay light (no trainer, tokenizers or safetensors).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> import name, as pyproject's package-dir maps them
PACKAGES = {"vnmini": "vnmini", "kernels": "vnmini.kernels", "models": "vnmini.models",
            "export": "vnmini.export", "cli": "vnmini.cli"}
# runtime.sampling is pure data + numpy: the checkpoint writer records its defaults in generation_config.json
CORE = ("vnmini.runtime.sampling", "vnmini.atomic", "vnmini.paths", "vnmini.outputs", "vnmini.jsonl",
        "vnmini.checkpoint", "vnmini.progress", "vnmini.metrics", "vnmini.assets", "vnmini.text", "vnmini.data")
LAYERS = [  # (rank, module prefixes); the longest matching prefix decides
    (-1, ("vnmini._version", "vnmini.errors")),  # the one error type and the version: usable everywhere
    (0, ("vnmini.kernels",)),
    (1, ("vnmini.models",)),
    (2, CORE),
    (3, ("vnmini.runtime",)),
    (4, ("vnmini.training",)),
    (5, ("vnmini.export",)),
    (6, ("vnmini.eval", "vnmini.quickstart", "vnmini.info")),
    (7, ("vnmini.cli",)),
]


def layer(mod: str) -> int | None:
    best: tuple[int, int] | None = None
    for rank, prefixes in LAYERS:
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (rank, len(p))
    return None if best is None else best[0]


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = f
    return out


def vnmini_imports(path: Path, modname: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = modname if path.name == "__init__.py" else modname.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this package
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = base + ("." + node.module if node.module else "")
            else:
                target = node.module or ""
            if target == "vnmini" or not node.module:  # `from vnmini import x` / `from . import x`: x is the target
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return [(ln, m) for ln, m in found if m == "vnmini" or m.startswith("vnmini.")]


def test_every_module_is_in_a_layer():
    missing = [m for m in modules() if m != "vnmini" and layer(m) is None]
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def test_imports_only_flow_down():
    bad = []
    for mod, path in modules().items():
        if mod == "vnmini":
            continue  # the lazy public API may name anything
        src = layer(mod)
        for ln, target in vnmini_imports(path, mod):
            if target == "vnmini" and src == layer("vnmini.cli"):
                continue  # the CLI may use the public API
            if target == "vnmini" and src < layer("vnmini.cli"):
                bad.append(f"{path.relative_to(ROOT)}:{ln} imports the package root (a cycle); import the module")
                continue
            dst = layer(target)
            if dst is not None and dst > src:
                bad.append(f"{path.relative_to(ROOT)}:{ln} ({mod}, layer {src}) imports {target} (layer {dst})")
    assert not bad, "imports that flow up:\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from vnmini.cli import main\n    from . import gguf_writer\n")
    got = vnmini_imports(f, "vnmini.models.m")
    assert (2, "vnmini.cli") in got and (3, "vnmini.models.gguf_writer") in got, got
    assert layer("vnmini.cli") > layer("vnmini.models.m")


@pytest.mark.parametrize("pkg", ["vnmini.kernels", "vnmini.models", "vnmini"])
def test_light_imports(pkg):
    heavy = ["vnmini.training.trainer", "tokenizers", "safetensors", "vnmini.export", "vnmini.runtime.loader"]
    code = f"import sys, {pkg}\nprint([m for m in {heavy!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"import {pkg} pulled in {r.stdout.strip()}"

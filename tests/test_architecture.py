"""The layout is the architecture (docs/architecture.md): each subsystem is a folder, imports only
point down the layers, no module imports another's private name, and the teaching path loads alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bert_ref"

#: Layers, bottom up. A module may import from its own layer or a lower one. The top-level modules
#: `__init__`, `__main__` and `testing` are the public face: they may import anything.
LAYERS = [
    ("bert_ref.ops", "bert_ref._erf_table"),
    ("bert_ref.model",),
    ("bert_ref.encoder",),
    ("bert_ref.io",),
    ("bert_ref.backbone",),
    ("bert_ref.text",),
    ("bert_ref.oracle",),
    ("bert_ref.learn", "bert_ref.scale"),
    ("bert_ref.cli",),
]
PUBLIC_FACE = ("bert_ref", "bert_ref.__main__", "bert_ref.testing")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every `bert_ref` import in the file, nested ones included."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "bert_ref":
                continue
            names = [a.name for a in node.names]
            # `from bert_ref.x import y` may name a submodule: count it as importing bert_ref.x.y
            for name in names:
                sub = f"{module}.{name}"
                if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or \
                        (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").exists():
                    found.append((node.lineno, sub, []))
                else:
                    found.append((node.lineno, module, [name]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "bert_ref"]
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unplaced = [_module_name(p) for p in _modules() if _module_name(p) not in PUBLIC_FACE and
                _layer(_module_name(p)) is None]
    assert not unplaced, f"modules outside every layer of LAYERS: {unplaced}"


def test_imports_only_point_down():
    upward = []
    for path in _modules():
        me = _module_name(path)
        if me in PUBLIC_FACE:
            continue
        mine = _layer(me)
        assert mine is not None
        for line, module, names in _imports(path):
            if module == "bert_ref" and names == ["__version__"]:
                continue  # the version is written in the package root, which imports nothing
            if module == "bert_ref":
                upward.append(f"{me}:{line} imports the package root (the public face); import the module itself")
                continue
            theirs = _layer(module)
            if theirs is None or theirs > mine:
                upward.append(f"{me}:{line} imports {module} (layer {theirs}, above {mine})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_name():
    private = []
    for path in _modules():
        me = _module_name(path)
        for line, module, names in _imports(path):
            private += [f"{me}:{line} imports {module}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_teaching_path_loads_numpy_and_the_ops_alone():
    code = ("import sys; import bert_ref.ops; "
            "print(sorted(m for m in sys.modules if m.startswith('bert_ref')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['bert_ref', 'bert_ref._erf_table', 'bert_ref.ops']"


def test_the_public_names_are_lazy_and_all_resolve():
    code = ("import sys, bert_ref; before = sorted(m for m in sys.modules if m.startswith('bert_ref.')); "
            "[getattr(bert_ref, n) for n in bert_ref.__all__]; print(before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_subsystem_is_one_folder():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {"model", "io", "text", "oracle", "learn", "scale", "cli"}
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", "_erf_table", "ops", "encoder", "backbone", "testing"}

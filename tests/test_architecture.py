"""The layering ARCHITECTURE.md promises, checked on the source: import rules, no task or family branches outside
their seams, files that stay readable.

Imports are read from the syntax tree (module-level and function-level alike), so a lazy import inside a function
counts as much as one at the top of a file.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "toolkit").rglob("*.py")) + sorted((ROOT / "tui").rglob("*.py"))

CORE = {"toolkit.errors", "toolkit.events", "toolkit.rundir", "toolkit.registry", "toolkit.schema", "toolkit.config",
        "toolkit.steps", "toolkit.variants", "toolkit.resources", "toolkit"}
"""the run's data model: every stage may import it; it imports no stage"""
STAGES = ("train", "compress", "export", "eval", "report")
"""the stage units, in flow order (``report`` is toolkit/report.py with report_md.py and plots.py)"""
ALLOWED_STAGE_EDGES = {("compress", "train"), ("compress", "export"), ("eval", "export")}
"""stage -> stage imports that are allowed: the fine-tunes of compression use the training loop; compression and
evaluation use the exporters and their runtimes (the export library), never the other way round"""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # "from toolkit.compress import quantize"
    return found


def unit(module: str) -> str | None:
    """The layer unit a toolkit module belongs to: 'core', a stage, or another package / module name."""
    if not module.startswith("toolkit"):
        return None
    parts = module.split(".")
    if module == "toolkit":
        return "core"
    if parts[1] == "__main__":
        return "cli"
    if any(".".join(parts[:i]) in CORE for i in range(2, len(parts) + 1)) or module == "toolkit" or \
            parts[1] == "__version__":
        return "core"
    if parts[1] in ("report", "report_md", "plots"):
        return "report"
    return parts[1]


GRAPH = {module_name(p): imports_of(p) for p in SOURCES}


def test_the_core_imports_no_stage_and_nothing_above_it():
    bad = []
    for mod, imported in GRAPH.items():
        if unit(mod) != "core":
            continue
        for target in imported:
            if unit(target) not in (None, "core"):
                bad.append(f"{mod} imports {target}")
    assert not bad, "the core must not import stages or other packages: " + "; ".join(sorted(bad))


def test_stages_import_each_other_only_along_the_allowed_edges():
    edges: dict[tuple[str, str], list[str]] = {}
    for mod, imported in GRAPH.items():
        src = unit(mod)
        if src not in STAGES:
            continue
        for target in imported:
            dst = unit(target)
            if dst in STAGES and dst != src:
                edges.setdefault((src, dst), []).append(f"{mod} -> {target}")
    bad = {e: v for e, v in edges.items() if e not in ALLOWED_STAGE_EDGES}
    assert not bad, "stage imports outside the allowed edges: " + "; ".join(x for v in bad.values() for x in v)
    # the allowed edges form no cycle (a -> b and b -> a)
    assert not any((b, a) in edges for a, b in edges)


def test_no_package_cycles_among_toolkit_packages():
    """A package may not import another package that imports it back (module-level or lazily)."""
    deps: dict[str, set[str]] = {}
    for mod, imported in GRAPH.items():
        src = unit(mod)
        if src is None or src == "core" or not mod.startswith("toolkit"):
            continue
        for target in imported:
            dst = unit(target)
            if dst and dst not in ("core", src):
                deps.setdefault(src, set()).add(dst)
    cycles = sorted(f"{a} <-> {b}" for a in deps for b in deps[a] if a < b and a in deps.get(b, set()))
    assert not cycles, "packages that import each other: " + ", ".join(cycles)


def test_nothing_in_the_toolkit_imports_the_ui():
    bad = [f"{mod} imports {t}" for mod, imported in GRAPH.items() if mod.startswith("toolkit")
           for t in imported if t == "tui" or t.startswith("tui.") or t.split(".")[0] == "textual"]
    # `toolkit tui` launches the front end on request: the one place the core hands over to it
    bad = [b for b in bad if not b.startswith("toolkit.cli.tui ")]
    assert not bad, "; ".join(bad)


# ---- no task or family branches outside their seams ----------------------------------------------------------

def task_names() -> set[str]:
    from toolkit.registry import TASKS

    return set(TASKS.names())


FAMILY_NAMES = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "mobilebert", "gpt2",
                "llama", "qwen2", "mistral", "phi3", "gemma", "bart", "t5", "marian", "mbart", "vit", "deit",
                "resnet", "mobilenet_v2", "convnext", "efficientnet", "mobilevit", "edge-cnn"}


ALLOWED = {("toolkit/config.py", "text-classification")}
"""the recipe's default task (a default value, not a branch)"""


def _violations(path: Path, tasks: set[str]) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    in_tasks = rel.startswith("toolkit/tasks/")
    in_arch = rel.startswith("toolkit/arch/")
    in_models = rel.startswith("toolkit/models/")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in tasks and not in_tasks and (rel, node.value) not in ALLOWED:
                out.append(f"{rel}:{node.lineno}: task name {node.value!r}")
            if node.value == "Conv1D" and not in_arch:
                out.append(f"{rel}:{node.lineno}: class name 'Conv1D' (ask the architecture adapter)")
            if node.value in FAMILY_NAMES and not (in_arch or in_models or in_tasks):
                out.append(f"{rel}:{node.lineno}: family name {node.value!r}")
        if isinstance(node, (ast.Attribute, ast.Constant)) and not (in_arch or in_models or in_tasks):
            name = node.attr if isinstance(node, ast.Attribute) else node.value
            if name == "model_type":
                out.append(f"{rel}:{node.lineno}: model_type (ask the architecture adapter)")
    return out


def test_no_branch_on_a_task_name_or_a_model_type_outside_tasks_and_arch():
    tasks = task_names()
    found = [v for p in SOURCES for v in _violations(p, tasks)]
    assert not found, "\n".join(found)


def test_no_file_over_500_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in SOURCES
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long


@pytest.mark.parametrize("name", ["ARCHITECTURE.md"])
def test_architecture_doc_names_real_files(name):
    """Every path ARCHITECTURE.md names exists (so "which files do I touch" stays true)."""
    import re

    text = (ROOT / name).read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:toolkit|tui|tests|recipes|targets|benchmarks)/[\w./-]+\.(?:py|toml|md))`", text))
    assert paths, "ARCHITECTURE.md names no files"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{name} names files that do not exist: {missing}"

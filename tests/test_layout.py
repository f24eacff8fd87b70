"""The shape of the code (DESIGN.md, "Where things live"): one floor per folder, imports point down,
no module imports itself back through others, and test modules share only tests/fakes.py.

Pure logic: every module of our packages (and of tests/) is read with `ast`, none is imported, so an
import anywhere counts: at the top, inside a function, or under `if TYPE_CHECKING:` (a type-only
import is still knowledge of another floor; only the cycle check leaves those out, since they never
run). No fakes, no models. Each failure lists the file and line that breaks the rule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# The floors (DESIGN.md) and what each may import besides itself:
#   pipeline/ imports nothing of ours; stt/, tts/ and transport/ import pipeline/ (and each other only
#   where a stage really uses another), never agent/; agent/ is the only place that knows every stage.
FLOORS: dict[str, frozenset[str]] = {
    "pipeline": frozenset(),
    "stt": frozenset({"pipeline"}),
    "tts": frozenset({"pipeline"}),
    "transport": frozenset({"pipeline"}),
    "agent": frozenset({"pipeline", "stt", "tts", "transport"}),
}
# "…each other only where a stage really uses another": every such import is named here, with the
# reason, as (importing module, imported module). None today: what a stage needs of another (a
# playout, a transcriber) it is handed as a protocol of pipeline/stages.py.
STAGE_USES: dict[tuple[str, str], str] = {}

# What a test module may import from tests/: the shared fakes. Fixtures come from conftest.py,
# which pytest loads itself.
SHARED_TEST_MODULES = frozenset({"tests.fakes"})


@dataclass(frozen=True)
class Import:
    source: str  # dotted module that imports
    target: str  # dotted module imported (one of ours, as precise as it resolves)
    path: Path
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`

    def where(self) -> str:
        how = " (under TYPE_CHECKING)" if self.type_only else ""
        return f"{_rel(self.path)}:{self.line} imports {self.target}{how}"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def modules(root: Path, packages) -> dict[str, Path]:
    """Dotted name → file, for every module of `packages` under `root` (a package is its __init__)."""
    found = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, ours: dict[str, Path], tops: set[str]) -> list[Import]:
    """Every import of one of our modules in `path` (module `name`), wherever in the file it is."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def resolve(dotted: str) -> str | None:
        """The longest prefix of `dotted` that is one of our modules (or its top, if ours but unknown)."""
        parts = dotted.split(".")
        if parts[0] not in tops:
            return None
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in ours:
                return ".".join(parts[:n])
        return parts[0]

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target:
                    found.append(Import(name, target, path, node.lineno, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, `level - 1` packages up
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                target = resolve(f"{module}.{alias.name}") if f"{module}.{alias.name}" in ours else resolve(module)
                if target:
                    found.append(Import(name, target, path, node.lineno, type_only))
        for sub in ast.iter_child_nodes(node):
            visit(sub, type_only)

    visit(tree, False)
    return [i for i in found if i.target != name]


def all_imports(root: Path = ROOT, packages=tuple(FLOORS)) -> list[Import]:
    ours = modules(root, packages)
    return [i for name, path in ours.items() for i in imports_of(name, path, ours, set(packages))]


def floor_violations(imports: list[Import], floor: str) -> list[str]:
    """Each import out of `floor` that DESIGN.md's floors do not allow, with the rule it breaks."""
    out = []
    for i in imports:
        src, dst = i.source.split(".")[0], i.target.split(".")[0]
        if src != floor or dst == src or dst in FLOORS[src] or (i.source, i.target) in STAGE_USES:
            continue
        if src == "pipeline":
            rule = "pipeline/ imports nothing of ours"
        elif dst == "agent":
            rule = f"{src}/ never imports agent/ (agent/ wires the stages, not the other way)"
        else:
            rule = (f"{src}/ imports pipeline/ only; a stage may use another only where STAGE_USES "
                    f"(tests/test_layout.py) names it")
        out.append(f"{i.where()}: {rule}")
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """The import cycles among our modules (strongly connected sets of more than one module, or a
    module importing itself back), counting imports that run (not those under TYPE_CHECKING); a
    module also imports the packages above it."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.type_only:
            continue
        parts = i.target.split(".")
        for n in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            if ".".join(parts[:n]) != i.source:
                graph.setdefault(i.source, set()).add(".".join(parts[:n]))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _describe_cycle(component: list[str], imports: list[Import]) -> str:
    members = set(component)
    edges = sorted({i.where() for i in imports if not i.type_only and i.source in members
                    and any(i.target == m or i.target.startswith(m + ".") for m in members)})
    return " <-> ".join(component) + "\n    " + "\n    ".join(edges)


def _report(title: str, problems: list[str]) -> str:
    text = f"{title}: {len(problems)}\n  " + "\n  ".join(problems)
    print(text)
    return text


# --- the rules, on our code ------------------------------------------------------------------------

IMPORTS = all_imports()


def test_the_parser_sees_our_modules_and_their_imports():
    """A check that reads nothing passes everything: the modules and the agent's wiring are found."""
    assert len(modules(ROOT, FLOORS)) > 30
    used = {i.target.split(".")[0] for i in IMPORTS if i.source.startswith("agent.")}
    assert {"pipeline", "stt", "tts", "transport"} <= used, used


@pytest.mark.parametrize("floor", list(FLOORS))
def test_imports_point_down(floor):
    problems = floor_violations(IMPORTS, floor)
    assert not problems, _report(f"imports out of {floor}/ that DESIGN.md does not allow", problems)


def test_no_import_cycles_between_our_modules():
    found = [_describe_cycle(c, IMPORTS) for c in cycles(IMPORTS)]
    assert not found, _report("import cycles", found)


def test_every_stage_use_listed_is_still_an_import():
    """An entry in STAGE_USES for an import that is gone would let a later one in unseen."""
    present = {(i.source, i.target) for i in IMPORTS}
    stale = [f"{src} -> {dst} ({why})" for (src, dst), why in STAGE_USES.items() if (src, dst) not in present]
    assert not stale, _report("STAGE_USES entries with no such import", stale)


def test_no_test_module_imports_another():
    """Tests share through tests/fakes.py (and fixtures through conftest.py, which pytest loads),
    never through another test module: each module can be read, moved and run alone."""
    problems = [f"{_rel(path)}:{line} imports {name}: {why}" for path, line, name, why in shared_test_imports(TESTS)]
    assert not problems, _report("test modules importing another test module", problems)


def shared_test_imports(tests: Path):
    """(file, line, module, why) for each import of a module of `tests` other than the shared fakes."""
    local = {p.stem for p in tests.glob("*.py")}  # `import test_x` works too: pytest puts tests/ on sys.path
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = "tests." * bool(node.level) + (node.module or "")
                names = [f"{mod}.{a.name}" if mod in ("tests", "tests.") else mod for a in node.names]
            else:
                continue
            for name in names:
                name = name.replace("tests..", "tests.").rstrip(".")
                if name.split(".")[0] in local:
                    yield path, node.lineno, name, f"a second copy of tests/{name.split('.')[0]}.py: import tests.…"
                elif name.startswith("tests.") and name not in SHARED_TEST_MODULES:
                    yield path, node.lineno, name, "share it through tests/fakes.py (or a fixture in tests/conftest.py)"


# --- the checker itself can fail ---------------------------------------------------------------------


def test_the_rules_catch_what_they_forbid(tmp_path):
    """A tiny tree with one breach of each rule: each is reported, with its file and line."""
    files = {
        "pipeline/__init__.py": "",
        "pipeline/audio.py": "import numpy\n",
        "pipeline/bad.py": "def f():\n    from agent.session import run\n",
        "stt/__init__.py": "",
        "stt/vad.py": "from pipeline import audio\nfrom typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from tts.playout import Playout\n",
        "tts/__init__.py": "",
        "tts/playout.py": "from pipeline.audio import x\n",
        "transport/__init__.py": "",
        "transport/edge.py": "import agent.session\n",
        "agent/__init__.py": "",
        "agent/session.py": "from stt import vad\nfrom . import loop\n",
        "agent/loop.py": "from agent.session import run\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    imports = all_imports(tmp_path)
    got = {floor: floor_violations(imports, floor) for floor in FLOORS}
    assert [p.split(": ")[0] for p in got["pipeline"]] == [f"{tmp_path}/pipeline/bad.py:2 imports agent.session"]
    assert [p.split(": ")[0] for p in got["stt"]] == [
        f"{tmp_path}/stt/vad.py:4 imports tts.playout (under TYPE_CHECKING)"]
    assert [p.split(": ")[0] for p in got["transport"]] == [f"{tmp_path}/transport/edge.py:1 imports agent.session"]
    assert got["tts"] == got["agent"] == []
    assert cycles(imports) == [["agent.loop", "agent.session"]]
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "fakes.py").write_text("import numpy\n")
    (tests / "test_a.py").write_text("from tests.fakes import x\nfrom tests import fakes\n")
    (tests / "test_b.py").write_text("from tests.test_a import y\nimport fakes\nfrom tests import test_a\n"
                                     "from . import conftest\n")
    (tests / "conftest.py").write_text("from tests.fakes import x\n")
    got_tests = [(p.name, line, name) for p, line, name, _ in shared_test_imports(tests)]
    assert got_tests == [("test_b.py", 1, "tests.test_a"), ("test_b.py", 2, "fakes"), ("test_b.py", 3, "tests.test_a"),
                         ("test_b.py", 4, "tests.conftest")]

"""The house's floors: the method imports nothing of ours, the reader and config sit low, no circles."""

import ast
import re
import sys
import typing
from pathlib import Path

import tstrain
from tstrain.config import ModelConfig, TSTConfig

PACKAGE = Path(tstrain.__file__).parent
BESIDE = {"integrations", "evaltasks", "presets"}  # adapters and data files, outside the floors


def module_name(path: Path) -> str:
    """Return a module's dotted name within tstrain (``data/tokens.py`` is ``data.tokens``; every file of
    ``kernels/`` is ``kernels``, one unit; a package's ``__init__`` is the package)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[0] == "kernels":
        return "kernels"
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_files() -> dict[str, list[Path]]:
    """Return the files of every module in the floors, by dotted name."""
    files: dict[str, list[Path]] = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        if p.relative_to(PACKAGE).parts[0] not in BESIDE:
            files.setdefault(module_name(p), []).append(p)
    return files


def imports_of(module: Path, known: set[str] | None = None) -> set[str]:
    """Return the tstrain modules a module imports (at any depth of its code), by dotted name."""
    known = set(module_files()) if known is None else known
    here = module_name(module).split(".") if module.name != "__init__.py" else module_name(module).split(".") + [""]
    package = here[:-1] if module.relative_to(PACKAGE).parts[0] != "kernels" else ["kernels"]
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = package[: len(package) - (node.level - 1)]
            above = base + (node.module.split(".") if node.module else [])
            targets = [above + [a.name] for a in node.names]  # a module imported by name, or a name inside one
            for t in targets:
                while t and ".".join(t) not in known:
                    t = t[:-1]  # a name inside a module: the module
                if t:
                    found.add(".".join(t))
    return found - {module_name(module)}


# What ``import tstrain`` loads: the public surface, torch and numpy only.
PUBLIC_CORE = {"superposition", "schedule", "options", "data.permutation", "errors", "data.reader", "batches", "loss",
               "model_parts", "optim"}


def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {m: set().union(*(imports_of(p, known) for p in ps)) for m, ps in files.items()}


def file_of(module: str) -> Path:
    return PACKAGE / (module.replace(".", "/") + ".py")


def module_level_imports(module: Path) -> set[str]:
    """Return the top-level names a module imports when it is loaded (not inside its functions)."""
    found = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or "").split(".")[0])
    return found


def test_the_method_and_the_reader_import_nothing_above_them():
    g = graph()
    # torch, and the settings' names and window layout from the torch-free schedule: the method in one file.
    # Its fused loss asks kernels/ for the Triton kernel on CUDA, inside the function; the kernels import
    # nothing of ours.
    assert g["superposition"] <= {"kernels", "schedule"}
    assert module_level_imports(PACKAGE / "superposition.py") == {"__future__", "torch", ".schedule"}
    for kernel in (PACKAGE / "kernels").glob("*.py"):
        assert not any(name.startswith("..") or name == "tstrain" for name in module_level_imports(kernel))
        assert imports_of(kernel) == set()  # within kernels/ only
    assert g["data.permutation"] == set()  # numpy only, under the reader
    # the settings, their rules and the two phases, torch-free: the config imports them to build its flags
    # (its fields written with ``options.knob``, as every other documented setting is)
    assert g["schedule"] == {"errors", "options"} and third_party_imports_of(PACKAGE / "schedule.py") == set()
    assert g["data.reader"] <= {"errors", "data.permutation", "schedule"}
    assert g["config"] <= {"errors", "fileio", "options", "schedule"} and g["options"] == {"errors"}
    assert g["fileio"] == {"errors"}  # the config reads a --config file as every record is read
    below_trainer = {m for m in g if not m.startswith(("train.loop", "studies", "cli", "doctor"))}
    assert not any(d.startswith(("train.loop", "studies")) for m in below_trainer for d in g[m])


def third_party_imports_of(module: Path) -> set[str]:
    """Return the top-level packages outside the standard library and tstrain a module imports."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        found.update(n.split(".")[0] for n in names)
    return found - set(sys.stdlib_module_names) - {"__future__"}


def test_the_public_core_imports_only_itself_torch_and_numpy():
    g = graph()
    core = PUBLIC_CORE | {"kernels"}  # the Triton kernel, loaded on CUDA only, when triton is installed
    assert all(g[m] <= core for m in PUBLIC_CORE), {m: g[m] - core for m in PUBLIC_CORE}
    assert set().union(*(third_party_imports_of(file_of(m)) for m in PUBLIC_CORE)) <= {"torch", "numpy"}
    assert third_party_imports_of(PACKAGE / "kernels" / "__init__.py") == set()


def test_no_module_imports_itself_through_others():
    g = graph()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in g.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = [m for m in g if reaches(m, m, {m})]
    assert circles == []


def test_config_choices_are_the_ones_the_core_and_models_accept():
    from tstrain.superposition import VARIANTS, WEIGHT_SCHEMES

    hints = typing.get_type_hints(TSTConfig)
    assert typing.get_args(hints["variant"]) == VARIANTS
    assert typing.get_args(hints["weights"]) == WEIGHT_SCHEMES
    families = typing.get_args(typing.get_type_hints(ModelConfig)["family"])
    from tstrain.config import ModelConfig as M
    from tstrain.models import hf_config

    for family in families:  # every family the config admits builds
        hf_config(M(family=family, num_kv_heads=4 if family == "gpt2" else 2, num_experts=2, num_experts_per_tok=1,
                    moe_intermediate_size=8), 64, 16)


def test_no_function_is_longer_than_80_lines():
    long = []
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{module_name(p)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_no_source_file_is_longer_than_500_lines():
    long = [f"{p.relative_to(PACKAGE)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 500]
    assert long == []


def architecture_floors() -> dict[str, int]:
    """Return each module's floor as ARCHITECTURE.md's table gives it."""
    floors = {}
    for line in (PACKAGE.parents[1] / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in re.findall(r"`([\w/]+?)(?:\.py|/)`", cells[1]):
                floors[name.replace("/", ".")] = int(cells[0])
    return floors


# The imports within a floor, both of errors (which imports nothing): the file helpers raise its WriteError, the
# documented settings its ConfigError.
WITHIN_FLOOR = {("fileio", "errors"), ("options", "errors")}


def test_every_module_sits_on_its_floor_of_the_architecture_table():
    floors, g = architecture_floors(), graph()
    packages = {"", "__main__", "data", "train", "studies"}  # no code of their own
    assert set(g) - packages == set(floors)  # every module is in the table, and no other
    upward = [f"{m} (floor {floors[m]}) imports {d} (floor {floors[d]})"
              for m in floors for d in g[m] if floors[d] >= floors[m] and (m, d) not in WITHIN_FLOOR]
    assert upward == []


def test_the_trainer_is_one_layer_nothing_it_imports_imports_it_back():
    g = graph()
    trainer = {m for m in g if m.startswith("train.")}

    def reached(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in g.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    outside = set().union(*(g[m] for m in trainer)) - trainer  # what the trainer stands on
    assert {m: sorted(reached(m) & trainer) for m in outside if reached(m) & trainer} == {}

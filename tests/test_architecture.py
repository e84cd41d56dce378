"""The house's floors: the method imports nothing of ours, the reader and config sit low, no circles."""

import ast
import re
import sys
import typing
from pathlib import Path

import tstrain
from tstrain.config import ModelConfig, TSTConfig

PACKAGE = Path(tstrain.__file__).parent


def imports_of(module: Path) -> set[str]:
    """Return the tstrain modules a module imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


# What ``import tstrain`` loads: the public surface, torch and numpy only.
PUBLIC_CORE = {"superposition", "schedule", "permutation", "errors", "reader", "batches", "loss", "model_parts",
               "optim"}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) for p in PACKAGE.glob("*.py")}


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
    # torch only: the method alone in one file. Its fused loss asks kernels/ for the Triton kernel on CUDA,
    # inside the function, so loading the method loads nothing of ours; the kernels import nothing of ours.
    assert g["superposition"] <= {"kernels"}
    assert module_level_imports(PACKAGE / "superposition.py") == {"__future__", "torch"}
    for kernel in (PACKAGE / "kernels").glob("*.py"):
        assert not any(name.startswith("..") or name == "tstrain" for name in module_level_imports(kernel))
        assert imports_of(kernel) <= {p.stem for p in (PACKAGE / "kernels").glob("*.py")}
    assert g["permutation"] == set()  # numpy only, under the reader
    assert g["schedule"] == {"superposition"}  # the two phases from the settings alone
    assert g["reader"] <= {"errors", "permutation", "schedule"} and g["config"] <= {"errors", "schedule"}
    below_trainer = {"superposition", "schedule", "reader", "config", "data", "prepare", "phases", "models",
                     "checkpoint", "evaluation", "model_io", *PUBLIC_CORE}
    assert not any("train" in g[m] or "experiments" in g[m] for m in below_trainer)


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
    assert set().union(*(third_party_imports_of(PACKAGE / f"{m}.py") for m in PUBLIC_CORE)) <= {"torch", "numpy"}
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
    for p in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{p.stem}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def architecture_floors() -> dict[str, int]:
    """Return each module's floor as ARCHITECTURE.md's table gives it."""
    floors = {}
    for line in (PACKAGE.parents[1] / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in re.findall(r"`(\w+)(?:\.py|/)`", cells[1]):
                floors[name] = int(cells[0])
    return floors


# The one import within a floor: the method asks kernels/ (which imports nothing of ours) for the Triton
# kernel inside its CUDA branch only.
WITHIN_FLOOR = {("superposition", "kernels")}


def test_every_module_sits_on_its_floor_of_the_architecture_table():
    floors, g = architecture_floors(), graph()
    g["kernels"] = set().union(*(imports_of(k) for k in (PACKAGE / "kernels").glob("*.py"))) - {"triton_mce"}
    assert set(g) - {"__init__", "__main__"} == set(floors)  # every module is in the table, and no other
    upward = [f"{m} (floor {floors[m]}) imports {d} (floor {floors[d]})"
              for m in floors for d in g[m] if floors[d] >= floors[m] and (m, d) not in WITHIN_FLOOR]
    assert upward == []

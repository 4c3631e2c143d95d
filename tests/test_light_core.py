"""A light core (DESIGN.md, principle 8): ``import kdedu.losses`` needs only torch and numpy.

Each import runs in a fresh interpreter with ``-X importtime``, which lists every module it loads. Heavy
libraries must not appear beyond what ``import torch`` loads by itself (torch.hub imports tqdm when it is
installed). Imports point one way: kdedu.kernels never imports kdedu.losses (kd_loss imports the kernels
lazily, inside the function), and the two only share the leaf module kdedu._validate.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "scipy", "transformers", "torchvision", "datasets", "ipywidgets", "sklearn", "pandas",
         "tqdm")


def loaded_modules(statement: str) -> set[str]:
    """The modules a fresh interpreter loads to run ``statement``, read from ``-X importtime``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # lines look like "import time:   self [us] | cumulative | imported package"
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.fixture(scope="module")
def torch_itself() -> set[str]:
    return top_level(loaded_modules("import torch, numpy"))


@pytest.mark.parametrize("statement", ["import kdedu", "import kdedu.losses", "import kdedu.kernels",
                                       "from kdedu.losses import kd_loss, generalized_jsd_loss, topk_kd_loss"])
def test_core_imports_load_no_heavy_library(statement, torch_itself):
    extra = top_level(loaded_modules(statement)) - torch_itself
    assert not extra & set(HEAVY), f"{statement!r} loads {sorted(extra & set(HEAVY))}"


def test_import_kdedu_is_lazy():
    kdedu_modules = {m for m in loaded_modules("import kdedu") if m.startswith("kdedu.")}
    assert not kdedu_modules, f"import kdedu loads {sorted(kdedu_modules)}"


def test_lazy_attributes_still_work():
    code = ("import kdedu; from kdedu import fit; import kdedu.train as tr; assert fit is tr.fit; "
            "assert kdedu.losses.kd_loss and kdedu.History is tr.History and kdedu.__version__; "
            "assert {'fit', 'losses', 'viz', 'kernels'} <= set(dir(kdedu)); "
            "import pytest; pytest.raises(AttributeError, getattr, kdedu, 'no_such_thing')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_kernels_and_losses_do_not_import_each_other():
    assert not any(m.startswith("kdedu.losses") for m in loaded_modules("import kdedu.kernels"))
    assert not any(m.startswith("kdedu.kernels") for m in loaded_modules("import kdedu.losses"))


def module_level_imports(path: Path) -> set[str]:
    """The modules a file imports outside functions (what runs when it is imported)."""
    names = set()
    for node in ast.parse(path.read_text()).body:  # top-level statements only: lazy imports sit in functions
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("package,forbidden", [("kernels", "kdedu.losses"), ("losses", "kdedu.kernels")])
def test_no_module_level_import_between_kernels_and_losses(package, forbidden):
    for path in sorted((ROOT / "kdedu" / package).glob("*.py")):
        bad = {m for m in module_level_imports(path) if m == forbidden or m.startswith(forbidden + ".")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} at module level"


def test_validate_is_a_leaf():
    imported = module_level_imports(ROOT / "kdedu" / "_validate.py")
    assert not {m for m in imported if m.startswith("kdedu")}, imported

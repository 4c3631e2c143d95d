"""The stored tables (kdedu/results/*.json): well-formed, with provenance, and reproducible.

Each table was made by `make results NB=book/NN-slug.ipynb` (the chapter executed in the `powered` profile with
KDEDU_RESULTS=record). Here every chapter that owns a table is executed again with KDEDU_RESULTS=reproduce: each
table re-runs one (run, seed) at its stored configuration and must give the stored value (within the table's
stated tolerance: 0, exactly, unless the chapter says otherwise); every other run returns its stored values, so
the chapter's later cells run on the stored numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "kdedu" / "results"
TABLES = sorted(RESULTS.glob("*.json"))


def _notebook(table: Path) -> str:
    commands = {r["provenance"]["command"] for r in json.loads(table.read_text())["runs"].values()}
    notebooks = {m.group(1) for c in commands for m in [re.search(r"NB=(\S+\.ipynb)", c)] if m}
    assert len(notebooks) == 1, f"{table.name}: its runs must come from one `make results NB=...`, got {commands}"
    return notebooks.pop()


@pytest.mark.parametrize("table", TABLES, ids=[t.stem for t in TABLES])
def test_table_is_well_formed(table):
    data = json.loads(table.read_text())
    assert data["table"] == table.stem and data["runs"], f"{table.name}: no runs"
    for name, run in data["runs"].items():
        n = len(run["seeds"])
        assert n >= 2 and len(run["values"]) == n == len(run["metrics"]) == len(run["time_s"]), name
        assert all(m[run["metric"]] == v for m, v in zip(run["metrics"], run["values"], strict=True)), name
        prov = run["provenance"]
        assert prov["profile"] == "powered", f"{name}: stored from the {prov['profile']} profile"
        for key in ("command", "commit", "versions", "machine", "recorded", "wall_time_s"):
            assert prov.get(key) not in (None, ""), f"{table.name}/{name}: provenance lacks {key}"
    assert (ROOT / _notebook(table)).exists()


NOTEBOOKS = sorted({_notebook(t) for t in TABLES})


def _recorded_on(notebook: str) -> set:
    """The numerics fingerprints of the machines that recorded the notebook's tables (None: not recorded)."""
    return {run["provenance"]["machine"].get("numerics") for t in TABLES if _notebook(t) == notebook
            for run in json.loads(t.read_text())["runs"].values()}


def test_numerics_fingerprint_is_stable_and_sensitive(monkeypatch):
    """The fingerprint is the same on every call here, and changes when one float32 product is one ulp off."""
    import torch

    from kdedu import experiment

    before = experiment.numerics_fingerprint()
    assert experiment.numerics_fingerprint() == before
    real = torch.Tensor.__matmul__

    def one_ulp_off(a, b):
        out = real(a, b).clone()
        out.view(-1)[0] = torch.nextafter(out.view(-1)[0], torch.tensor(float("inf")))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", one_ulp_off)
    assert experiment.numerics_fingerprint() != before


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_stored_tables_reproduce(notebook, tmp_path):
    from kdedu.experiment import numerics_fingerprint

    here, there = numerics_fingerprint(), _recorded_on(notebook)
    if None not in there and here not in there:
        pytest.skip(f"{notebook}'s tables were recorded on a machine whose float arithmetic differs from this one's "
                    f"(numerics fingerprint {sorted(there)} there, {here} here): the same recipe trains bit-wise "
                    f"different models, so an exact reproduction can only be checked there, or after re-recording "
                    f"here (make results NB={notebook})")
    env = {**os.environ, "KDEDU_PROFILE": "powered", "KDEDU_RESULTS": "reproduce", "KDEDU_PROGRESS": "0",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "KDEDU_CACHE": str(tmp_path / "cache")}
    env.pop("KDEDU_RESULTS_DIR", None)
    out = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                          "--ExecutePreprocessor.timeout=1800", "--output-dir", str(tmp_path), str(ROOT / notebook)],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    machine_signs = ("the checksum of trained weights differs", "does not reproduce")
    if out.returncode != 0 and None in there and any(sign in out.stderr for sign in machine_signs):
        pytest.skip(f"{notebook}'s tables were recorded before machines were fingerprinted, and they do not reproduce "
                    f"on this machine (numerics fingerprint {here}): a machine whose float arithmetic differs cannot "
                    f"be told from a regression. Re-record them here (make results NB={notebook}).")
    assert out.returncode == 0, f"{notebook} did not reproduce its stored tables:\n{out.stderr[-3000:]}"

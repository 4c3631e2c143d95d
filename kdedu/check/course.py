"""Problem sets for a course: the student and instructor notebooks from one source, and a grader for a folder.

A problem set's source is a MyST notebook, ``book/assignments/psN-slug.md``, in otter-grader's assignment format
(questions, solutions and tests marked with ```otter fences). Its checks are :mod:`kdedu.check` exercises, so a
student gets feedback as they go, in Colab or JupyterLab, and the grader scores the same checks::

    python -m kdedu.check.course build book/assignments/ps1-foundations.md --out _build/assignments
    python -m kdedu.check.course grade submissions/ --autograder _build/assignments/ps1-foundations/autograder.zip

``build`` runs ``otter assign`` and writes, per set, ``<out>/<set>/student.ipynb`` (solutions replaced by ``...``),
``instructor.ipynb`` (with them) and ``autograder.zip`` (the tests). ``grade`` grades every ``*.ipynb`` of a folder,
each in its own process and fresh kernel (``otter run``'s grading, without Docker), with a wall-clock timeout, cut
off from the network when the machine allows it (a new network namespace: ``unshare``), and writes a CSV with one
column per question. A submission that breaks, hangs or kills its kernel scores zero for what it broke, with the
reason in the CSV; the grading goes on.

Grading runs the student's code in a kernel on the grading machine, as every notebook grader without containers
does: it trusts the code not to forge its own results. For untrusted classes, use ``otter grade`` (Docker).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from kdedu._io import atomic_write

__all__ = ["build", "grade", "questions"]

CONFIG = """# ASSIGNMENT CONFIG
name: {name}
init_cell: false
check_all_cell: false
export_cell: false
run_tests: false
requirements:
  - "{kdedu}"
tests:
  files: true"""
"""The otter assignment configuration every problem set gets: no otter cells in the notebooks (the checks are
kdedu.check's), tests in files, the solutions not executed at build time (the tests run them), and the kdedu
release the notebooks install as the autograder's requirement (for ``otter grade``'s Docker images)."""


def _release() -> str:
    """``kdedu @ git+<repository>@v<version>``: the release a problem set's notebooks install."""
    from importlib.metadata import metadata

    from kdedu import __version__

    urls = [u.split(",", 1)[1].strip() for u in metadata("kdedu").get_all("Project-URL") or []
            if u.lower().startswith("homepage")]
    return f"kdedu @ git+{urls[0]}@v{__version__}" if urls else f"kdedu=={__version__}"


def _otter():
    try:
        import otter  # noqa: F401
    except ImportError:
        raise ImportError("problem sets are built and graded with otter-grader: pip install 'kdedu[book]' "
                          "(or pip install otter-grader)") from None


def _clean(nb, strip_markers: bool):
    """A generated notebook in the book's form: no jupytext header, stable cell ids, and (instructor) no otter
    solution markers left in the code."""
    nb.metadata.pop("jupytext", None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
        if strip_markers and cell.cell_type == "code":
            lines = [line for line in cell.source.split("\n")
                     if not re.fullmatch(r"\s*# (BEGIN|END) SOLUTION( NO PROMPT)?\s*", line)]
            cell.source = "\n".join(lines)
    return nb


def build(source: str | os.PathLike, out: str | os.PathLike) -> dict[str, Path]:
    """Build the problem set ``source`` (``psN-slug.md``) into ``out/psN-slug/``; returns the three paths
    (``student``, ``instructor``, ``autograder``)."""
    import jupytext
    import nbformat

    _otter()
    source = Path(source)
    if source.suffix != ".md" or not source.is_file():
        raise ValueError(f"source must be a problem set's .md file, got {str(source)!r}")
    name = source.stem
    nb = jupytext.read(source)
    nb.cells.insert(0, nbformat.v4.new_raw_cell(CONFIG.format(name=name, kdedu=_release())))
    target = Path(out) / name
    with tempfile.TemporaryDirectory() as tmp:
        master = Path(tmp) / f"{name}.ipynb"
        nbformat.write(nb, master)
        dist = Path(tmp) / "dist"
        run = subprocess.run([sys.executable, "-m", "otter", "assign", "--no-pdfs", str(master), str(dist)],
                             capture_output=True, text=True, cwd=tmp)
        if run.returncode != 0:
            raise RuntimeError(f"otter assign failed on {source}:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
        zips = sorted((dist / "autograder").glob("*.zip"))
        if len(zips) != 1:
            raise RuntimeError(f"otter assign made {len(zips)} autograder zips for {source}")
        target.mkdir(parents=True, exist_ok=True)
        paths = {"student": target / "student.ipynb", "instructor": target / "instructor.ipynb",
                 "autograder": target / "autograder.zip"}
        for kind, folder in (("student", "student"), ("instructor", "autograder")):
            made = _clean(nbformat.read(dist / folder / f"{name}.ipynb", as_version=4), kind == "instructor")
            atomic_write(paths[kind], (nbformat.writes(made) + "\n").encode("utf-8"))
        atomic_write(paths["autograder"], zips[0].read_bytes())
    return paths


def questions(autograder: str | os.PathLike) -> dict[str, float]:
    """The questions of an autograder zip and their points, in the set's order (``q1-...``, ``q2-...``)."""
    autograder = Path(autograder)
    if not zipfile.is_zipfile(autograder):
        raise ValueError(f"autograder must be an autograder zip from `build`, got {str(autograder)!r}")
    out = {}
    with zipfile.ZipFile(autograder) as z:
        for entry in z.namelist():
            m = re.fullmatch(r"tests/(.+)\.py", entry)
            if m:
                points = re.search(r"'points':\s*([0-9.]+)", z.read(entry).decode("utf-8"))
                out[m.group(1)] = float(points.group(1)) if points else 1.0
    if not out:
        raise ValueError(f"autograder {str(autograder)!r} holds no tests")

    def order(q):
        m = re.match(r"q(\d+)", q)
        return (int(m.group(1)) if m else 10**6, q)

    return {q: out[q] for q in sorted(out, key=order)}


# ------------------------------------------------------------------------------------------
# grading
# ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _isolation() -> list[str]:
    """The command prefix that runs a process with no network (only a loopback, for the kernel's own sockets) in
    its own PID namespace, so that killing it kills everything it started; ``[]`` where the machine forbids it."""
    prefix = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
              "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else []


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started (its PID namespace when isolated, else its descendants)."""
    try:
        import psutil

        family = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # psutil missing or the process already gone
        family = []
    for p in family:
        try:
            p.kill()
        except Exception:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def _grade_one(autograder: str, submission: str, result: str) -> None:
    """In a child process: grade one notebook with otter and write ``{"scores", "errors"}`` to ``result``."""
    import nbformat
    from otter.api import grade_submission

    out = {"status": "graded", "scores": {}, "errors": []}
    try:
        submitted = nbformat.read(submission, as_version=4)
    except Exception as err:  # not a notebook: say so here, not from deep inside otter
        out.update(status="invalid", errors=[f"not a readable notebook: {type(err).__name__}: {err}"])
        atomic_write(result, json.dumps(out).encode("utf-8"))
        return
    # otter adds cells of its own: name a failing cell by its place among the submission's code cells
    code_cells = [c.source for c in submitted.cells if c.cell_type == "code"]
    try:
        res = grade_submission(submission, autograder, quiet=True)
        for name, tf in res.results.items():
            out["scores"][name] = float(tf.score)
        if res.catastrophic_error is not None:
            out["errors"].append(f"grading: {type(res.catastrophic_error).__name__}: {res.catastrophic_error}")
        for cell in res.notebook.cells if res.notebook is not None else []:
            for o in cell.get("outputs", []):
                if o.get("output_type") == "error":
                    where = (f"code cell {code_cells.index(cell.source) + 1}" if cell.source in code_cells
                             else "a grading cell")
                    out["errors"].append(f"{where}: {o.get('ename')}: {o.get('evalue')}")
    except BaseException as err:  # noqa: BLE001 - whatever the submission did (e.g. kill its kernel), report it
        out["status"] = "crashed"
        out["errors"].append(f"{type(err).__name__}: {err}")
    atomic_write(result, json.dumps(out).encode("utf-8"))


def _run_one(autograder: Path, submission: Path, timeout: float, workdir: Path) -> dict:
    result = workdir / f"{submission.stem}.json"
    log = workdir / f"{submission.stem}.log"
    cmd = [*_isolation(), sys.executable, "-m", "kdedu.check.course", "_grade-one",
           str(autograder), str(submission), str(result)]
    start = time.monotonic()
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            status = "graded"
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            status = "timeout"
    seconds = time.monotonic() - start
    if status == "timeout":
        return {"status": status, "scores": {}, "errors": [f"timed out after {timeout:g} s"], "seconds": seconds}
    try:
        if proc.returncode != 0:  # a result left by a process that did not finish cleanly is not trusted
            raise ValueError(proc.returncode)
        got = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return {"status": "crashed", "scores": {}, "seconds": seconds,
                "errors": [f"the grading process died (exit {proc.returncode}): " + " | ".join(tail)]}
    return {"status": got["status"], "scores": got["scores"], "errors": got["errors"], "seconds": seconds}


def grade(submissions: str | os.PathLike, autograder: str | os.PathLike, out: str | os.PathLike | None = None,
          timeout: float = 900.0, jobs: int = 1, progress: bool = True) -> list[dict]:
    """Grade every ``*.ipynb`` in the folder ``submissions`` and write the scores to the CSV ``out`` (default
    ``<submissions>/grades.csv``): one row per notebook, one column per question, then ``total``, ``possible``,
    ``status`` (graded; invalid: not a notebook; timeout; crashed: the grading process died), ``seconds`` and
    ``errors`` (each error a cell raised, in order).

    Each notebook runs in its own process, at most ``timeout`` seconds, ``jobs`` at a time. Returns the rows.
    """
    from kdedu._validate import check_positive_int

    submissions, autograder = Path(submissions), Path(autograder)
    if not submissions.is_dir():
        raise ValueError(f"submissions must be a folder of .ipynb files, got {str(submissions)!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    check_positive_int("jobs", jobs)
    _otter()
    points = questions(autograder)
    notebooks = sorted(submissions.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"submissions {str(submissions)!r} holds no .ipynb file")
    if not _isolation():
        print("warning: this machine does not allow a network namespace (unshare): the notebooks are graded "
              "with the network as it is", file=sys.stderr)
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(jobs) as pool:
        runs = []
        for i, nb in enumerate(notebooks):
            workdir = Path(tmp) / f"{i:04d}"
            workdir.mkdir()
            runs.append(pool.submit(_run_one, autograder.resolve(), nb.resolve(), timeout, workdir))
        got = [r.result() for r in tqdm(runs, desc="grading", unit="notebook", disable=not progress)]
    rows = []
    for nb, g in zip(notebooks, got, strict=True):
        row = {"notebook": nb.name}
        for q, p in points.items():
            row[q] = min(float(g["scores"].get(q, 0.0)), p)
        row["total"] = sum(row[q] for q in points)
        row["possible"] = sum(points.values())
        row.update(status=g["status"], seconds=round(g["seconds"], 1), errors=" || ".join(g["errors"]))
        rows.append(row)
    out = Path(out) if out is not None else submissions / "grades.csv"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out, table.getvalue().encode("utf-8"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdedu.check.course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="student and instructor notebooks and the autograder zip of problem sets")
    b.add_argument("sources", nargs="+", help="problem set sources, book/assignments/psN-slug.md")
    b.add_argument("--out", default="_build/assignments", help="output folder (default: _build/assignments)")
    b.add_argument("--student-dir", help="also copy each student notebook here, as <set>.ipynb")
    g = sub.add_parser("grade", help="grade a folder of submitted notebooks into a CSV")
    g.add_argument("submissions", help="a folder of .ipynb files")
    g.add_argument("--autograder", required=True, help="the set's autograder.zip, made by `build`")
    g.add_argument("--out", help="the CSV to write (default: <submissions>/grades.csv)")
    g.add_argument("--timeout", type=float, default=900.0, help="seconds per notebook (default: 900)")
    g.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (default: 1)")
    one = sub.add_parser("_grade-one")  # internal: one notebook, in the child process
    one.add_argument("autograder")
    one.add_argument("submission")
    one.add_argument("result")
    args = parser.parse_args(argv)
    if args.command == "build":
        for source in args.sources:
            paths = build(source, args.out)
            if args.student_dir:
                dest = Path(args.student_dir) / f"{Path(source).stem}.ipynb"
                atomic_write(dest, paths["student"].read_bytes())
            print(f"{source}: {', '.join(str(p) for p in paths.values())}")
    elif args.command == "grade":
        rows = grade(args.submissions, args.autograder, args.out, timeout=args.timeout, jobs=args.jobs)
        for row in rows:
            print(f"{row['notebook']}: {row['total']:g} / {row['possible']:g} ({row['status']})")
    else:
        _grade_one(args.autograder, args.submission, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

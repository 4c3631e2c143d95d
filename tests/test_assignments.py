"""The course's problem sets (book/assignments) and their grader, kdedu.check.course.

* one problem set per Part of the book, each built by otter-grader's ``otter assign`` into a student notebook (no
  solution) and an instructor notebook (with them); the student notebooks in the repository are what the build
  makes of their source;
* every instructor notebook, graded in a fresh kernel, scores full marks and raises nothing;
* the grading command on one folder: a correct notebook scores full marks, the handed-out (empty) one 0, one that
  raises at import 0 with the error recorded, one that loops forever times out with 0, one that kills its kernel 0
  (crashed), a partial one its partial marks, and a file that is not a notebook 0; the grading goes on through
  all of them and writes one CSV column per question.
"""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("otter", reason="pip install 'kdedu[book]' (otter-grader) for the problem sets")

from kdedu.check import EXERCISES, course  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ROOT / "book" / "assignments"
SOURCES = sorted(ASSIGNMENTS.glob("ps[0-9]-*.md"))
PARTS = 7  # Parts I-VII of CHAPTERS.md
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M).group(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("assignments")
    return {src.stem: course.build(src, out) for src in SOURCES}


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_one_problem_set_per_part():
    assert [int(re.match(r"ps(\d)", s.stem).group(1)) for s in SOURCES] == list(range(1, PARTS + 1))
    for src in SOURCES:
        text = src.read_text(encoding="utf-8")
        n = len(re.findall(r"^# BEGIN QUESTION$", text, re.M))
        assert n >= 4, f"{src.name}: {n} questions, expected at least 4"
        ids = re.findall(r'kdedu\.check\.exercise\("([^"]+)"', text)
        assert ids and all(i in EXERCISES for i in ids), f"{src.name}: unknown exercise ids {ids}"
        new = {i for i in ids if i.startswith(src.stem.split("-")[0] + ".")}
        chapters = {i for i in ids if re.match(r"\d\d\.", i)}
        assert new and chapters, f"{src.name}: needs the chapters' exercises and one of its own ({sorted(ids)})"


def test_the_appendix_lists_every_set_as_its_source_has_it():
    """book/assignments.md's table: per set, each question's exercise id and points, the total, the Colab badge."""
    page = (ROOT / "book" / "assignments.md").read_text(encoding="utf-8")
    for src in SOURCES:
        text = src.read_text(encoding="utf-8")
        n = re.match(r"ps(\d)", src.stem).group(1)
        [row] = [line for line in page.splitlines() if line.startswith(f"| **{n}** · ")]
        points = [int(p) for p in re.findall(r"^# BEGIN QUESTION\nname: \S+\npoints: (\d+)", text, re.M)]
        ids = re.findall(r'^kdedu\.check\.exercise\("([^"]+)"', text, re.M)
        assert re.findall(r"\(`([^`]+)`, (\d+)\)", row) == [(i, str(p)) for i, p in zip(ids, points, strict=True)], row
        assert f"| {sum(points)} |" in row
        assert f"/blob/v{VERSION}/book/assignments/student/{src.stem}.ipynb)" in row


def test_student_notebooks_are_built_from_their_source(built):
    for name, paths in built.items():
        committed = ASSIGNMENTS / "student" / f"{name}.ipynb"
        assert committed.is_file(), f"{committed} is missing: python -m kdedu.check.course build ... --student-dir"
        fresh = nbformat.read(paths["student"], as_version=4)
        kept = nbformat.read(committed, as_version=4)
        assert [(c.cell_type, c.source) for c in kept.cells] == [(c.cell_type, c.source) for c in fresh.cells], \
            f"{committed.name} differs from its source {name}.md: rebuild it"
        assert kept.metadata == fresh.metadata


def test_students_see_no_solution_and_instructors_see_all(built):
    for name, paths in built.items():
        student = nbformat.read(paths["student"], as_version=4)
        instructor = nbformat.read(paths["instructor"], as_version=4)
        s_code, i_code = _code(student), _code(instructor)
        assert len(s_code) == len(i_code)
        answers = [(s, i) for s, i in zip(s_code, i_code, strict=True) if s != i]
        assert len(answers) == len(course.questions(paths["autograder"])), name
        for s, i in answers:  # the student's answer cell is the placeholder alone
            assert re.fullmatch(r"\w+ = None  # replace None by your [\w ]+", s), \
                f"{name}: a solution reaches the student:\n{s}"
            assert "SOLUTION" not in i and i.startswith(s + "\n"), f"{name}: the instructor's answer is missing:\n{i}"
        assert not any("grader" in c for c in s_code), f"{name}: otter cells in the student notebook"


def test_the_autograder_installs_the_release_the_notebooks_install(built):
    """otter grade (Docker) installs the autograder's environment: the same kdedu as the notebooks' install line."""
    import zipfile

    github = re.search(r"^\s*github:\s*(\S+)", (ROOT / "myst.yml").read_text(encoding="utf-8"), re.M).group(1)
    release = f"kdedu @ git+{github}@v{VERSION}"
    for name, paths in built.items():
        with zipfile.ZipFile(paths["autograder"]) as z:
            env = z.read("environment.yml").decode()  # what otter grade's image installs
        assert re.search(rf"^\s+- {re.escape(release)}$", env, re.M), f"{name}: {env}"
        first = _code(nbformat.read(paths["student"], as_version=4))[0]
        assert f'"{release}"' in first, name


@pytest.mark.parametrize("src", SOURCES, ids=[s.stem for s in SOURCES])
def test_every_instructor_notebook_scores_full_marks(src, built, tmp_path):
    paths = built[src.stem]
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "solutions.ipynb").write_bytes(paths["instructor"].read_bytes())
    [row] = course.grade(folder, paths["autograder"], timeout=600, progress=False)
    assert row["status"] == "graded" and row["errors"] == "", row
    assert row["total"] == row["possible"] == sum(course.questions(paths["autograder"]).values()) > 0, row


def _variant(nb, change) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    change(nb.cells)
    return nb


def test_grading_a_folder_of_broken_partial_and_correct_notebooks(built, tmp_path):
    paths = built["ps1-foundations"]
    points = course.questions(paths["autograder"])
    solved = nbformat.read(paths["instructor"], as_version=4)
    student = nbformat.read(paths["student"], as_version=4)
    code = [i for i, c in enumerate(solved.cells) if c.cell_type == "code"]
    answers = [i for i in code if solved.cells[i].source != student.cells[i].source]
    first_q = next(iter(points))

    def break_import(cells):  # the first code cell imports kdedu.check: misspell it
        cells[code[0]].source = cells[code[0]].source.replace("import kdedu.check", "import kdedu.checks")

    def loop(cells):
        cells[answers[0]].source = "while True:\n    pass"

    def kill_kernel(cells):
        cells[answers[1]].source = "import os\nos._exit(1)"

    def partial(cells):  # the first question's answer left as handed out
        cells[answers[0]].source = student.cells[answers[0]].source

    folder = tmp_path / "submissions"
    folder.mkdir()
    for name, nb in (("correct", solved), ("empty", student), ("raises-at-import", _variant(solved, break_import)),
                     ("loops-forever", _variant(solved, loop)), ("kills-its-kernel", _variant(solved, kill_kernel)),
                     ("partial", _variant(solved, partial))):
        nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / "not-a-notebook.ipynb").write_text("{ this is not JSON", encoding="utf-8")

    rows = course.grade(folder, paths["autograder"], out=tmp_path / "grades.csv", timeout=90, jobs=2,
                        progress=False)
    by = {r["notebook"].removesuffix(".ipynb"): r for r in rows}
    full = sum(points.values())
    assert by["correct"]["total"] == full and by["correct"]["errors"] == ""
    assert by["empty"]["total"] == 0 and by["empty"]["status"] == "graded"
    assert by["raises-at-import"]["total"] == 0
    assert by["raises-at-import"]["errors"].startswith(
        "code cell 1: ModuleNotFoundError: No module named 'kdedu.checks'")
    assert by["loops-forever"]["status"] == "timeout" and by["loops-forever"]["total"] == 0
    assert "timed out after 90 s" in by["loops-forever"]["errors"]
    assert by["kills-its-kernel"]["status"] == "crashed" and by["kills-its-kernel"]["total"] == 0
    assert "DeadKernelError" in by["kills-its-kernel"]["errors"]
    assert by["partial"]["total"] == full - points[first_q] and by["partial"][first_q] == 0
    assert by["not-a-notebook"]["status"] == "invalid" and by["not-a-notebook"]["total"] == 0

    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["notebook"] for r in table] == sorted(f"{n}.ipynb" for n in by)
    assert list(table[0]) == ["notebook", *points, "total", "possible", "status", "seconds", "errors"]
    assert {r["notebook"]: float(r["total"]) for r in table} == {r["notebook"]: r["total"] for r in rows}


def test_grading_is_offline_where_the_machine_allows_it(built, tmp_path):
    if not course._isolation():
        pytest.skip("no network namespace on this machine (unshare)")
    paths = built["ps1-foundations"]
    nb = nbformat.read(paths["instructor"], as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first + 1, nbformat.v4.new_code_cell(
        "import socket\nsocket.create_connection(('pypi.org', 443), timeout=5)"))
    folder = tmp_path / "submissions"
    folder.mkdir()
    nbformat.write(nb, folder / "reaches-out.ipynb")
    [row] = course.grade(folder, paths["autograder"], timeout=300, progress=False)
    assert row["errors"].startswith("code cell 2: gaierror") or "code cell 2: OSError" in row["errors"], row
    assert row["total"] == row["possible"]  # the failed request cost nothing else


def test_bad_arguments_are_named(built, tmp_path):
    ag = built["ps1-foundations"]["autograder"]
    with pytest.raises(ValueError, match="submissions must be a folder"):
        course.grade(tmp_path / "nowhere", ag)
    with pytest.raises(ValueError, match="holds no .ipynb"):
        course.grade(tmp_path, ag)
    with pytest.raises(ValueError, match="timeout must be"):
        course.grade(tmp_path, ag, timeout=0)
    with pytest.raises(ValueError, match="jobs"):
        course.grade(tmp_path, ag, jobs=0)
    with pytest.raises(ValueError, match="autograder must be"):
        course.questions(tmp_path / "grades.csv")
    with pytest.raises(ValueError, match="source must be"):
        course.build(tmp_path / "ps9.md", tmp_path)

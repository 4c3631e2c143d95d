"""Checks of the book's sources that need no kernel: structure, pairing, badges, citations, and MyST.

The chapters themselves are executed by nbval in `make test` (see the Makefile); here we check what a
reader, Colab and the site build rely on:

* every ``book/NN-slug.md`` has its jupytext pair ``book/NN-slug.ipynb`` with the same cells and no
  stored outputs;
* its Open-in-Colab badge points at that notebook in the repository named by ``myst.yml``'s
  ``project.github``, and its first code cell installs kdedu only inside Colab;
* it is in the table of contents, ends with exercises of which one is checked by ``kdedu.check``;
* every citation key exists in ``book/references.bib`` and every local link resolves;
* every figure is referred to from its page's text (``[](#fig-...)``), not only from its caption;
* ``jupyter book build --md`` (fully offline) reports no error or warning about a source file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]-*.md"))
# pages that run code: the chapters and the appendix pages with a notebook (the Makefile executes them all);
# a chapter's rules on titles and exercises are for the numbered chapters only
PAGES = sorted(set(CHAPTERS) | {md for md in BOOK.glob("*.md") if md.with_suffix(".ipynb").exists()})
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
MYST_TIMEOUT_S = 300


def _ids(paths):
    return [p.stem for p in paths]


def _myst_config(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "myst.yml").read_text(encoding="utf-8"))


def _toc_files(entries) -> list[str]:
    out = []
    for entry in entries or []:
        if "file" in entry:
            out.append(entry["file"])
        out += _toc_files(entry.get("children"))
    return out


def _strip_code(text: str) -> str:
    """The Markdown text without fenced blocks (code cells, code examples) and inline code spans,
    keeping MyST roles such as {cite:p}`key`."""
    text = re.sub(r"^(`{3,}|~{3,}).*?^\1\s*$", "", text, flags=re.S | re.M)
    return re.sub(r"(\{[\w:-]+\}`[^`\n]*`)|`[^`\n]*`", lambda m: m.group(1) or "", text)


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def _first_code_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code"), None)


# ------------------------------------------------------------------------------------------------
# table of contents
# ------------------------------------------------------------------------------------------------
def test_every_toc_file_exists():
    toc = _toc_files(_myst_config()["project"]["toc"])
    assert toc and toc[0] == "book/index.md", "the toc must start with book/index.md"
    missing = [f for f in toc if not (ROOT / f).is_file()]
    assert not missing, f"myst.yml's toc names files that do not exist: {missing}"


def test_every_chapter_is_in_the_toc():
    toc = set(_toc_files(_myst_config()["project"]["toc"]))
    absent = [p.relative_to(ROOT).as_posix() for p in PAGES if p.relative_to(ROOT).as_posix() not in toc]
    assert not absent, f"chapters and appendix pages missing from myst.yml's toc: {absent}"


def test_every_notebook_has_its_markdown_source():
    orphans = [nb.name for nb in NOTEBOOKS if not nb.with_suffix(".md").exists()]
    assert not orphans, f"notebooks without their book/*.md source (edit the .md, pair with jupytext): {orphans}"


def test_every_notebook_is_executed_by_make():
    """`make chapters` (nbval) executes the Makefile's CHAPTERS: every notebook must be in it."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-",
                          "print-chapters"], input="print-chapters:\n\t@echo $(CHAPTERS)\n", cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip(f"make is not available here: {out.stderr.strip()[:200]}")
    executed = set(out.stdout.split())
    missing = [nb.relative_to(ROOT).as_posix() for nb in NOTEBOOKS if nb.relative_to(ROOT).as_posix() not in executed]
    assert not missing, f"notebooks the Makefile's CHAPTERS does not execute: {missing}"


# ------------------------------------------------------------------------------------------------
# each chapter
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("md", PAGES, ids=_ids(PAGES))
def test_chapter_is_paired_with_its_notebook(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `.venv/bin/jupytext --to ipynb book/{md.name}`"
    from_md, from_ipynb = _cells(jupytext.read(md)), _cells(jupytext.read(ipynb))
    if from_md != from_ipynb:
        i = next((i for i, (a, b) in enumerate(zip(from_md, from_ipynb, strict=False)) if a != b),
                 min(len(from_md), len(from_ipynb)))
        md_cell = from_md[i] if i < len(from_md) else ("(none)", "")
        nb_cell = from_ipynb[i] if i < len(from_ipynb) else ("(none)", "")
        pytest.fail(f"{ipynb.name} is out of sync with {md.name} ({len(from_md)} vs {len(from_ipynb)} cells); "
                    f"run `.venv/bin/jupytext --update --to ipynb book/{md.name}`. First difference, cell {i}:\n"
                    f"  .md:    {md_cell[0]}: {md_cell[1][:200]!r}\n  .ipynb: {nb_cell[0]}: {nb_cell[1][:200]!r}")


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_no_outputs(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{ipynb.name} stores outputs or execution counts in cells {dirty}; regenerate it from the .md"


@pytest.mark.parametrize("md", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_title(md):
    nn = md.name[:2]
    first_md = next(c for c in jupytext.read(md).cells if c.cell_type == "markdown")
    assert first_md.source.startswith(f"# {nn} · "), f"{md.name} must open with its title `# {nn} · Title`"


def _release() -> tuple[str, str]:
    """(owner/repo from myst.yml's project.github, the release tag every badge and install line names)."""
    github = _myst_config()["project"]["github"].rstrip("/")
    owner_repo = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(\.git)?", github)
    assert owner_repo, f"myst.yml project.github must be https://github.com/<owner>/<repo>, got {github!r}"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M).group(1)
    return owner_repo.group(1), f"v{version}"


def test_release_version_agrees():
    import kdedu

    repo, tag = _release()
    assert tag == f"v{kdedu.__version__}", "pyproject.toml's version and kdedu.__version__ differ (ci/release.py)"
    homepage = re.search(r'^Homepage = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert homepage and homepage.group(1) == f"https://github.com/{repo}", \
        "pyproject.toml's Homepage (the repository kdedu.check.course names) must be myst.yml's github"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"https://colab\.research\.google\.com/github/([^)\s\"'>`]+)", readme)
    assert links, "README.md should say how to open a chapter in Colab"
    wrong = [u for u in links if not u.startswith(f"{repo}/blob/{tag}/book/")]
    assert not wrong, f"README.md: Colab links {wrong} should open {repo}/blob/{tag}/book/... (ci/release.py)"


ASSIGNMENT_SOURCES = sorted((BOOK / "assignments").glob("ps[0-9]-*.md"))
COLAB_PAGES = PAGES + ASSIGNMENT_SOURCES


@pytest.mark.parametrize("md", COLAB_PAGES, ids=_ids(COLAB_PAGES))
def test_colab_badge_points_at_this_notebook(md):
    repo, tag = _release()
    notebook = "book/" + (f"assignments/student/{md.stem}" if md.parent != BOOK else md.stem) + ".ipynb"
    expected = f"https://colab.research.google.com/github/{repo}/blob/{tag}/{notebook}"
    urls = re.findall(r"https://colab\.research\.google\.com/github/[^)\s\"'>]+", md.read_text(encoding="utf-8"))
    assert urls, f"{md.name} has no Open-in-Colab badge linking to {expected}"
    wrong = [u for u in urls if u != expected]
    assert not wrong, f"{md.name}: Colab links {wrong} should be {expected} (the release tag: ci/release.py)"
    # the badge's picture is the book's own file: an outside image cannot be fetched by an offline site build
    badges = re.findall(r"\[!\[[^\]]*\]\(([^)\s]+)\)\]\(https://colab\.research\.google\.com/",
                        md.read_text(encoding="utf-8"))
    picture = "./images/colab-badge.svg" if md.parent == BOOK else "../images/colab-badge.svg"
    assert badges and all(b == picture for b in badges), \
        f"{md.name}: the Colab badge image must be {picture}, got {badges}"
    assert (BOOK / "images" / "colab-badge.svg").is_file()


@pytest.mark.parametrize("md", COLAB_PAGES, ids=_ids(COLAB_PAGES))
def test_kdedu_is_installed_only_in_colab(md):
    repo, tag = _release()
    nb = jupytext.read(md)
    first = _first_code_cell(nb)
    assert first is not None, f"{md.name} has no code cell"
    lines = first.source.splitlines()
    guard = next((i for i, line in enumerate(lines)
                  if re.match(r"""if\s+["']google\.colab["']\s+in\s+sys\.modules\s*:""", line)), None)
    assert guard is not None, f'{md.name}: the first code cell must hold `if "google.colab" in sys.modules:`'
    assert any(re.match(r"\s*import\s+sys\b", line) for line in lines[:guard]), \
        f"{md.name}: `import sys` must come before the Colab guard"
    installs = [i for i, line in enumerate(lines) if "pip install" in line and "kdedu" in line]
    assert installs, f"{md.name}: the first code cell must install kdedu (inside the Colab guard)"
    for i in installs:
        inside = i > guard and all(line.startswith((" ", "\t")) or not line.strip() for line in lines[guard + 1:i + 1])
        assert inside, f"{md.name}: `{lines[i].strip()}` must be inside the `if \"google.colab\" in sys.modules:` block"
        # a tagged release, not main: a later commit cannot break a published chapter
        assert re.fullmatch(rf'\s+%pip install -q "kdedu(\[[a-z,]+\])? @ git\+https://github\.com/{re.escape(repo)}@{tag}"',
                            lines[i]), f"{md.name}: `{lines[i].strip()}` must install kdedu @ git+https://github.com/{repo}@{tag}"
    for cell in nb.cells:
        if cell is not first and cell.cell_type == "code":
            assert not re.search(r"pip install.*kdedu", cell.source), f"{md.name}: install kdedu only in the first cell"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebooks_that_want_a_gpu_ask_colab_for_one(ipynb):
    """A page whose experiments have a `full` profile (kdedu.profile.pick: the profile a GPU selects) asks Colab
    for a GPU in the notebook's metadata; a page without one does not. The keys live in the .ipynb only (MyST
    would warn about them in the .md's front matter); jupytext keeps them there when it syncs the pair."""
    wants = "profile.pick(" in ipynb.with_suffix(".md").read_text(encoding="utf-8")
    meta = nbformat.read(ipynb, as_version=4).metadata
    asks = meta.get("accelerator") == "GPU" and bool(meta.get("colab", {}).get("gpuType"))
    assert asks == wants, f"{ipynb.name}: " + (
        'its full profile wants a GPU: add "accelerator": "GPU" and "colab": {"gpuType": "T4"} to its metadata'
        if wants else "asks for a GPU it never uses")


@pytest.mark.parametrize("md", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_has_checked_exercises(md):
    nb = jupytext.read(md)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert re.search(r"^:{3,}\{exercise\}|^`{3,}\{exercise\}", text, re.M), f"{md.name} has no {{exercise}}"
    assert "kdedu.check.exercise(" in code, f"{md.name} has no exercise checked by kdedu.check.exercise(...)"


# ------------------------------------------------------------------------------------------------
# citations and links
# ------------------------------------------------------------------------------------------------
def _bib_keys() -> list[str]:
    return re.findall(r"^\s*@\w+\s*\{\s*([^,\s]+)\s*,", (BOOK / "references.bib").read_text(encoding="utf-8"), re.M)


def _cited_keys(text: str) -> set[str]:
    text = _strip_code(text)
    keys = set()
    for group in re.findall(r"\[([^\[\]]*)\]", text):  # [@a], [@a; @b], [see @a, p. 3], [-@a]
        if re.match(r"\s*-?@", group) or re.search(r";\s*-?@", group):
            keys |= set(re.findall(r"-?@([\w][\w:.\-]*[\w])", group))
    for roles in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text):  # {cite:p}`a,b`
        keys |= {k.strip() for k in re.split(r"[,;]", roles) if k.strip()}
    return keys


def test_bibliography_keys_are_unique():
    keys = _bib_keys()
    assert keys, "book/references.bib has no entries"
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    assert not dupes, f"book/references.bib defines these keys more than once: {dupes}"


def test_every_citation_key_is_in_the_bibliography():
    known = set(_bib_keys())
    unknown = {}
    for md in sorted(BOOK.glob("*.md")):
        missing = sorted(_cited_keys(md.read_text(encoding="utf-8")) - known)
        if missing:
            unknown[md.name] = missing
    assert not unknown, f"citation keys missing from book/references.bib: {unknown}"


def test_cited_keys_parser():
    text = "See [@a2020; @b-c:2] and {cite:p}`d1,e2` and {cite:t}`f3`.\n```python\n@decorator\n[@nokey]\n```\n`[@x]`"
    assert _cited_keys(text) == {"a2020", "b-c:2", "d1", "e2", "f3"}


def test_local_links_resolve():
    broken = []
    for md in sorted(BOOK.glob("*.md")):
        text = _strip_code(md.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:|#", target):  # http:, mailto:, doi:, #label
                continue
            path = target.split("#", 1)[0]
            if path and not (md.parent / path).exists() and f"{md.name}: {target}" not in broken:
                broken.append(f"{md.name}: {target}")
    assert not broken, f"links to files that do not exist: {broken}"


# ------------------------------------------------------------------------------------------------
# figures: each one is referred to from its page's text
# ------------------------------------------------------------------------------------------------
_FIGURE = re.compile(r"^(:{3,}|`{3,})\{figure\}[ \t]*(\S*)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)


def _figures(text: str) -> list[tuple[str, ...]]:
    """Every figure of a page, as the labels a reference to it may use: a ``{figure}`` directive's ``:label:``
    (first) and the code cell it shows (``:::{figure} #fig-x``), or a code cell's ``#| label: fig-...`` that no
    directive shows. A figure with no label is an empty tuple."""
    figures, shown = [], set()
    for m in _FIGURE.finditer(text):
        labels = tuple(re.findall(r"^:label:[ \t]*(\S+)", m.group(3), re.M))
        labels += (m.group(2)[1:],) if m.group(2).startswith("#") else ()
        shown.update(labels)
        figures.append(labels)
    figures += [(cell,) for cell in re.findall(r"^#\|[ \t]*label:[ \t]*(fig-\S+)", text, re.M) if cell not in shown]
    return figures


def _referenced_labels(text: str) -> set[str]:
    """The labels a page's text refers to (``[](#x)``, ``[words](#x)``, ``{numref}`x```, ``{ref}`words <x>```,
    ``@x``), outside code and outside figure captions: a figure's own caption does not count."""
    prose = _strip_code(_FIGURE.sub("", text))
    refs = set(re.findall(r"\]\(\s*#([\w.:-]+)\s*\)", prose))
    refs |= set(re.findall(r"\{(?:numref|ref)\}`(?:[^`<]*<)?([\w.:-]+)>?`", prose))
    refs |= set(re.findall(r"(?<![\w.@])@([\w][\w.:-]*[\w])", prose))
    return refs


def test_every_figure_is_referred_to_in_its_page():
    """A figure is read where the text points at it: every figure of a book/*.md page is referred to from that
    page's text (not only from its own caption)."""
    unreferenced, unlabelled = {}, []
    for md in sorted(BOOK.glob("*.md")):
        text = md.read_text(encoding="utf-8")
        refs = _referenced_labels(text)
        figures = _figures(text)
        unlabelled += [md.name for labels in figures if not labels]
        missing = [labels[0] for labels in figures if labels and not set(labels) & refs]
        if missing:
            unreferenced[md.name] = missing
    assert not unlabelled, f"figures without a label, so nothing can refer to them: {unlabelled}"
    assert not unreferenced, (f"figures that the text never refers to (write `[](#label)` where the figure is "
                              f"read): {unreferenced}")


def test_figure_reference_parser():
    text = ("```{code-cell} ipython3\n#| label: fig-a\nplot()  # [](#fig-b-caption) in code does not count\n```\n\n"
            ":::{figure} #fig-a\n:label: fig-a-caption\nA caption that cites [](#fig-c).\n:::\n\n"
            "```{code-cell} ipython3\n#| label: fig-b\nplot()\n```\n\n"
            ":::{figure} #fig-b\n:label: fig-b-caption\nB.\n:::\n\n"
            "```{code-cell} ipython3\n#| label: fig-c\nplot()\n```\n\n"
            ":::{figure} ./drawing.png\nNo label.\n:::\n\n"
            "As [](#fig-a-caption) shows, and [the other one](#fig-d) [@hinton2015].\n")
    assert _figures(text) == [("fig-a-caption", "fig-a"), ("fig-b-caption", "fig-b"), (), ("fig-c",)]
    refs = _referenced_labels(text)
    assert {"fig-a-caption", "fig-d", "hinton2015"} <= refs
    assert not {"fig-b-caption", "fig-c"} & refs  # in code, or only in another figure's caption


# ------------------------------------------------------------------------------------------------
# MyST content check: `jupyter book build --md`, offline, in a temporary copy (no _build/ in the repo)
# ------------------------------------------------------------------------------------------------
def myst_problems(project: Path, timeout: float = MYST_TIMEOUT_S) -> list[str]:
    """Build ``project`` (a folder with myst.yml and book/) to Markdown and return the ``⛔️``/``⚠️``
    lines that name a source file (``book/...`` or ``myst.yml``).

    ``jupyter book build`` exits 0 even when a page has unresolved references or unknown directives,
    so the lines are what tell. The Markdown exporter's own complaints about ``_build/exports/...``
    ("Unsupported node type: exercise", ...) are not about the sources and are ignored.
    """
    config = _myst_config(project)
    files = _toc_files(config["project"]["toc"])
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    with tempfile.TemporaryDirectory(prefix="kdedu-myst-") as tmp:
        shutil.copy2(project / "myst.yml", tmp)
        shutil.copytree(project / "book", Path(tmp) / "book",
                        ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__"))
        env = {**os.environ, "JB_ALLOW_NODEENV": "0", "NO_COLOR": "1", "FORCE_COLOR": "0"}
        try:
            proc = subprocess.run([sys.executable, "-m", "jupyter_book", "build", "--md", *files], cwd=tmp,
                                  env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"`jupyter book build --md` did not finish in {timeout} s (is it waiting on the network?)\n"
                        f"{(err.stdout or b'')[-3000:]!r}")
    output = ansi.sub("", proc.stdout + proc.stderr)
    problems = []
    for line in output.splitlines():
        m = re.match(r"\s*(⛔️|⚠️)\s*(\S.*)", line)
        if m and m.group(2).startswith(("book/", "myst.yml")) and line.strip() not in problems:
            problems.append(line.strip())
    if proc.returncode != 0 and not problems:
        node = "Node.js" in output or "requires node" in output
        hint = " (Jupyter Book needs Node.js >= 18 on PATH: conda's nodejs, Debian's nodejs)" if node else ""
        pytest.fail(f"`jupyter book build --md` failed with exit code {proc.returncode}{hint}:\n{output[-3000:]}")
    return problems


def test_myst_content_has_no_errors_or_warnings():
    problems = myst_problems(ROOT)
    assert not problems, "jupyter book build --md reports:\n" + "\n".join(problems)


GOOD_PAGE = """\
---
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# 01 · A good page

Soft targets [@hinton2015] and {cite:p}`hinton2015`; the loss $T^2 \\KL(p_t \\| p_s)$ in @eq-scratch.

```{math}
:label: eq-scratch
\\mathcal{L} = (1 - \\alpha)\\, \\CE(z_s, y) + \\alpha\\, T^2 \\KL
```

```{code-cell} ipython3
#| label: fig-scratch
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot([1, 2, 3])
```

:::{figure} #fig-scratch
:label: fig-scratch-caption
A caption.
:::

As [](#fig-scratch-caption) shows; see also [](./bad.md).

:::{important} What to remember
- one
:::

## Exercises

:::{exercise}
:label: ex-scratch
Do it.
:::

```{code-cell} ipython3
answer = None
```

:::{solution} ex-scratch
:class: dropdown
Done.
:::
"""

BAD_PAGE = """\
# 02 · A bad page

A reference to [](#nonexistent-target), a citation of [@nosuchkey2099].

:::{notadirective}
Body.
:::
"""


def test_myst_check_catches_bad_references_directives_and_citations(tmp_path):
    """The check itself: the page patterns the chapters use pass, and the three usual mistakes fail."""
    config = _myst_config()
    config["project"]["toc"] = [{"file": "book/index.md"}, {"file": "book/good.md"}, {"file": "book/bad.md"}]
    (tmp_path / "book").mkdir()
    (tmp_path / "myst.yml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    shutil.copy2(BOOK / "references.bib", tmp_path / "book" / "references.bib")
    (tmp_path / "book" / "index.md").write_text("# Home\n\n[](./good.md)\n", encoding="utf-8")
    (tmp_path / "book" / "good.md").write_text(GOOD_PAGE, encoding="utf-8")
    (tmp_path / "book" / "bad.md").write_text(BAD_PAGE, encoding="utf-8")
    problems = myst_problems(tmp_path)
    assert not [p for p in problems if "bad.md" not in p], problems
    for needle in ("nonexistent-target", "notadirective", "nosuchkey2099"):
        assert any(needle in p for p in problems), f"the MyST check missed {needle!r}: {problems}"

"""Point every published notebook at one tagged release of kdedu: ``python ci/release.py 0.2.0``.

A chapter opened from its Colab badge must run against the kdedu it was written for, not against whatever `main`
is that day. So the version is written in four places, and tests/test_book.py checks that they agree:

* ``pyproject.toml``'s ``version`` and ``kdedu.__version__``;
* every Colab badge (chapters, appendices, problem sets, the README) opens ``blob/v<version>/...``;
* every install line installs ``git+<github>@v<version>`` (``<github>`` is ``myst.yml``'s ``project.github``).

The release itself: run this, commit, ``git tag v<version>``, push the tag. Between releases `main` moves on and the
published badges keep opening the tagged notebooks.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def github() -> str:
    """``owner/repo`` from myst.yml's ``project.github``."""
    url = yaml.safe_load((ROOT / "myst.yml").read_text(encoding="utf-8"))["project"]["github"]
    return re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)/?", url).group(1)


def rewrite(text: str, version: str, repo: str) -> str:
    text = re.sub(rf"(https://colab\.research\.google\.com/github/{re.escape(repo)}/blob/)[^/]+/",
                  rf"\g<1>v{version}/", text)
    return re.sub(rf"(git\+https://github\.com/{re.escape(repo)})(@v[0-9][^\"'\s\\]*)?(?=[\"'\s\\])",
                  rf"\g<1>@v{version}", text)


def files() -> list[Path]:
    book = ROOT / "book"
    return sorted([ROOT / "README.md", *book.glob("*.md"), *book.glob("*.ipynb"), *book.glob("assignments/*.md"),
                   *book.glob("assignments/student/*.ipynb")])


def main(version: str) -> None:
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise SystemExit(f"version must look like 1.2.3, got {version!r}")
    repo = github()
    for path in files():
        old = path.read_text(encoding="utf-8")
        new = rewrite(old, version, repo)
        if path.suffix == ".ipynb":
            json.loads(new)  # still a notebook
        if new != old:
            path.write_text(new, encoding="utf-8")
    for path, pattern in ((ROOT / "pyproject.toml", r'^version = "[^"]+"'),
                          (ROOT / "kdedu" / "__init__.py", r'^__version__ = "[^"]+"')):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(pattern, pattern.split(" = ")[0].lstrip("^") + f' = "{version}"', text, flags=re.M),
                        encoding="utf-8")
    print(f"every badge and install line now names v{version}; commit, then `git tag v{version}` and push the tag")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])

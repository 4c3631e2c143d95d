"""The HTML site without the web: the helpers `make site` and `make test` call (stdlib only, Playwright for `check`).

    python ci/site.py theme    when the theme service cannot be reached, unpack the local book-theme template
    python ci/site.py katex    after a build: serve KaTeX's CSS and fonts from the site instead of a CDN
    python ci/site.py check    open every page of _build/html in headless Chromium and check it (see `check`)

Jupyter Book 2 downloads its site theme from the web on the first build; our machines reach only the package
registries. `theme` unpacks the same theme, built from its source (``$KDEDU_SITE_THEME``, by default
``../shared/site/book-theme-1.1.2.tgz``), where Jupyter Book looks for a downloaded one. Online, it does nothing.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
TEMPLATE_DIR = ROOT / "_build" / "templates" / "site" / "myst"
THEME_HOST = "api.mystmd.org"
KATEX_VERSION = "0.15.2"  # the version the theme links to
KATEX_CDN = f"https://cdn.jsdelivr.net/npm/katex@{KATEX_VERSION}/dist/katex.min.css"
NO_THEME = 3  # theme's exit status when no theme can be had: `make test` then skips the site, `make book` fails


def _reachable(host: str, timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def theme() -> int:
    """Unpack the local theme template when the theme service is unreachable and no theme is there yet."""
    if (TEMPLATE_DIR / "book-theme" / "template.yml").exists():
        print(f"site theme: using {TEMPLATE_DIR / 'book-theme'}")
        return 0
    if _reachable(THEME_HOST):
        return 0  # online: Jupyter Book downloads the theme as usual
    archive = Path(os.environ.get("KDEDU_SITE_THEME", ROOT.parent / "shared" / "site" / "book-theme-1.1.2.tgz"))
    if not archive.is_file():
        print(f"site theme: {THEME_HOST} cannot be reached and there is no local theme template at {archive} "
              f"(set KDEDU_SITE_THEME to a book-theme .tgz)", file=sys.stderr)
        return NO_THEME
    tmp = Path(tempfile.mkdtemp(dir=TEMPLATE_DIR.parent if TEMPLATE_DIR.parent.exists() else None))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / "book-theme" / "template.yml").exists():
            print(f"site theme: {archive} does not hold book-theme/template.yml", file=sys.stderr)
            return 1
        TEMPLATE_DIR.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "book-theme", TEMPLATE_DIR / "book-theme")  # atomic: never a half-unpacked theme
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"site theme: {THEME_HOST} cannot be reached; unpacked {archive} into {TEMPLATE_DIR / 'book-theme'}")
    return 0


def _sri(path: Path) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()


def katex(html: Path = HTML) -> int:
    """Copy KaTeX's CSS and fonts (npm package ``katex``, the theme's version) into the site and point every
    page and script at them: offline, the CDN's CSS never arrives and every formula shows twice."""
    if not (html / "index.html").exists():
        print(f"katex: no site at {html} (build it first)", file=sys.stderr)
        return 1
    target = html / "katex"
    if not (target / "katex.min.css").exists():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run(["npm", "pack", f"katex@{KATEX_VERSION}", "--silent"], cwd=tmp, check=True,
                               capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                print(f"katex: `npm pack katex@{KATEX_VERSION}` failed ({e}); formulas will need the CDN",
                      file=sys.stderr)
                return 1
            with tarfile.open(Path(tmp) / f"katex-{KATEX_VERSION}.tgz") as tar:
                tar.extractall(tmp, filter="data")
            staged = Path(tmp) / "katex"
            staged.mkdir()
            shutil.copy(Path(tmp) / "package" / "dist" / "katex.min.css", staged)
            shutil.copytree(Path(tmp) / "package" / "dist" / "fonts", staged / "fonts")
            os.replace(staged, target)
    base = os.environ.get("BASE_URL", "").rstrip("/")
    local = f"{base}/katex/katex.min.css"
    sri = _sri(target / "katex.min.css")
    changed = 0
    for path in list(html.rglob("*.html")) + list((html / "build").rglob("*.js")):
        text = path.read_text(encoding="utf-8")
        if KATEX_CDN not in text:
            continue
        found = set(re.findall(r"sha384-[A-Za-z0-9+/=]+", text.split(KATEX_CDN, 1)[1][:300]))
        if found and sri not in found:
            print(f"katex: {path} expects another katex.min.css ({found}) than npm's {KATEX_VERSION} ({sri})",
                  file=sys.stderr)
            return 1
        path.write_text(text.replace(KATEX_CDN, local), encoding="utf-8")
        changed += 1
    print(f"katex: {changed} files now load KaTeX {KATEX_VERSION} from {local}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# the browser check
# ---------------------------------------------------------------------------------------------------------
SCREENSHOTS = ("index.html", "temperature/index.html", "beyond-compression/index.html")
WIDGET_PAGE, WIDGET_FIGURE = "temperature/index.html", "fig-03-soft-targets-t"  # MyST lower-cases ids


def _serve(html: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # one line per request would drown the check's own report
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # the browser dropped a request it no longer needed
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                super().handle_error(request, client_address)

    handler = functools.partial(Quiet, directory=str(html))
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


PAGE_PROBE = """(arguments_figure) => {
  const text = [...document.querySelectorAll('article p, article li, article td, article figcaption')]
    .map(e => e.innerText).join('\\n');
  const rawMath = (text.match(/\\$[^$\\s][^$]*\\$/g) || []).slice(0, 3);
  const images = [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const open = [...document.querySelectorAll('details')].filter(d => d.open)
    .map(d => (d.querySelector('summary') || d).innerText.slice(0, 60));
  const figure = document.getElementById(arguments_figure);
  const figureImages = figure ? [...figure.querySelectorAll('img')].filter(i => i.naturalWidth > 0).length : -1;
  return {katex: document.querySelectorAll('.katex').length, rawMath, images, links, open, figureImages,
          dropdowns: document.querySelectorAll('details').length};
}"""


def check(html: Path = HTML, shots: Path = ROOT / "_build" / "site-check", outputs: bool = False) -> int:
    """Every page of the built site in headless Chromium (Debian's, through Playwright): no console error (failed
    requests to outside hosts are listed, not failed), math rendered by KaTeX with no raw ``$``, every image
    loaded, every internal link resolving, exercise solutions collapsed, the temperature widget's static figure
    present (with ``outputs``, a site built from executed chapters: its image drawn); screenshots of three pages go
    to ``shots``."""
    from playwright.sync_api import sync_playwright

    pages = sorted(p.relative_to(html).as_posix() for p in html.glob("**/index.html") if "build" not in p.parts)
    if not pages:
        print(f"check: no pages under {html}", file=sys.stderr)
        return 1
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("check: no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    server, origin = _serve(html)
    problems, outside = [], set()
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: None if r.failure == "net::ERR_ABORTED"  # a prefetch cut by navigation
                else errors.append(f"failed request: {r.url} ({r.failure})"))
        page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        seen_links: set[str] = set()
        for rel in pages:
            errors.clear()
            page.goto(f"{origin}/{rel}", wait_until="networkidle", timeout=60_000)
            info = page.evaluate(PAGE_PROBE, WIDGET_FIGURE)
            for e in errors:
                url = re.search(r"https?://[^\s)'\"]+", e)
                if url and not url.group(0).startswith(origin):
                    outside.add(url.group(0))
                elif not e.startswith("Failed to load resource"):  # the response line names the URL
                    problems.append(f"{rel}: console error: {e}")
            if info["rawMath"]:
                problems.append(f"{rel}: math not rendered: {info['rawMath']}")
            problems += [f"{rel}: image not loaded: {i['src']}" for i in info["images"] if not i["ok"]]
            problems += [f"{rel}: solution dropdown open: {t!r}" for t in info["open"]]
            seen_links |= {h.split("#")[0] for h in info["links"] if h.startswith(origin)}
            if rel == WIDGET_PAGE and (info["figureImages"] < 0 or (outputs and info["figureImages"] == 0)):
                problems.append(f"{rel}: the temperature widget's static figure #{WIDGET_FIGURE} is "
                                + ("missing" if info["figureImages"] < 0 else "empty (no image drawn)"))
            if rel in SCREENSHOTS:
                page.screenshot(path=str(shots / (rel.replace("/index.html", "").replace(".html", "") + ".png")))
            print(f"  {rel}: {info['katex']} formulas, {len(info['images'])} images, {info['dropdowns']} dropdowns")
        for url in sorted(seen_links):
            response = page.request.get(url)
            if response.status != 200:
                problems.append(f"internal link {url[len(origin):]} -> HTTP {response.status}")
        browser.close()
    server.shutdown()
    if outside:
        print(f"requests to outside hosts that failed (not errors here; a reader online gets them): {len(outside)}")
        for url in sorted(outside):
            print(f"  {url}")
    print(f"check: {len(pages)} pages, {len(seen_links)} internal links; screenshots in {shots.relative_to(ROOT)}/")
    for p in problems:
        print(f"PROBLEM {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("theme", "katex", "check"))
    parser.add_argument("--outputs", action="store_true", help="check: the site was built from executed chapters")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(outputs=args.outputs)
    return {"theme": theme, "katex": katex}[args.command]()


if __name__ == "__main__":
    sys.exit(main())

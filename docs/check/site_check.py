"""Check the built docs site in a real browser: ``nox -s docs_browser`` runs this.

It serves ``site/`` on 127.0.0.1 under the project's subpath (``/gossip/``, as GitHub
Pages will), drives headless Chromium through Playwright's Python API with the system
browser, and checks, at a desktop width (1280 px) and a phone width (390 px):

- each page renders its heading;
- math is typeset (MathJax output present, no raw ``$$`` or ``\\(``) and typeset once;
- the gossip-nn reference lists ``GossipDataParallel``;
- the search box finds "PushSum";
- every figure loads, and one that the page scales down opens larger on click, and zooms
  to full size on a second click on the desktop (the glightbox plugin);
  screenshots show the most scaled-down figure and its enlarged view;
- the 404 page holds no root-relative links, and is styled with working links at a
  missing address three levels deep under the subpath and when opened from the folder;
- no console errors, except requests this check blocks from leaving the machine.

Screenshots go to ``site-check/`` with a ``report.json``. Exit status 0 means every check
passed; otherwise each failure is printed and the status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFIX = "/gossip/"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


@dataclass(frozen=True)
class PageCheck:
    """One page and what it must show."""

    slug: str
    path: str
    heading: str
    math: bool = False
    must_contain: tuple[str, ...] = ()
    figures: bool = False


PAGES = (
    PageCheck("home", "", "gossip", figures=True),
    PageCheck(
        "tutorial", "tutorials/topologies/", "Topologies, mixing and consensus", figures=True
    ),
    PageCheck("benchmarks", "benchmarks/", "Benchmarks", figures=True),
    PageCheck("concept-math", "concepts/push-sum/", "Push-sum and mixing matrices", math=True),
    PageCheck(
        "reference-gossip-nn",
        "reference/gossip-nn/",
        "gossip-nn",
        must_contain=("GossipDataParallel",),
    ),
)


@dataclass
class Report:
    """What the run found; written to ``report.json``."""

    failures: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    pages: list[dict[str, Any]] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            print(f"FAIL  {what}", flush=True)
        else:
            print(f"ok    {what}", flush=True)
        return ok


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serve the site under PREFIX; anything else, or a missing file, gets 404.html."""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def translate_path(self, path: str) -> str:
        parts = urlsplit(path)
        if not parts.path.startswith(PREFIX):
            return str(Path(self.directory) / "__missing__")
        return super().translate_path("/" + parts.path[len(PREFIX) :])

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        page = Path(self.directory) / "404.html"
        if code != 404 or not page.is_file():
            super().send_error(code, message, explain)
            return
        body = page.read_bytes()
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on a free port of 127.0.0.1 and yield the site's base URL."""
    handler = functools.partial(_Handler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    finally:
        server.shutdown()
        server.server_close()


def _find_browser(explicit: str | None) -> str:
    """The browser to drive: ``explicit`` if given, else the first Chromium on PATH."""
    for candidate in [explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]:
        if path := shutil.which(candidate):
            return path
    raise SystemExit(
        f"no Chromium found{f' at {explicit}' if explicit else ''}: install Debian's package "
        "(apt-get install -y chromium) or pass --browser PATH"
    )


def _check_page(
    page: Any, base: str, spec: PageCheck, width: str, out: Path, report: Report
) -> None:
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        source = (msg.location or {}).get("url", "")
        if msg.text.startswith("Failed to load resource") and source in report.blocked:
            return  # a request this check stopped from leaving the machine
        errors.append(f"{msg.text} ({source})" if source else msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    url = base + spec.path
    response = page.goto(url, wait_until="load")
    label = f"[{width}] {spec.slug}"
    report.check(response is not None and response.status == 200, f"{label}: {url} answers 200")
    heading = (
        page.locator("article h1").first.inner_text(timeout=10_000).strip().rstrip("¶").strip()
    )
    report.check(heading == spec.heading, f"{label}: heading is {spec.heading!r} (got {heading!r})")
    text = page.locator("article").inner_text()
    for needle in spec.must_contain:
        report.check(needle in text, f"{label}: page lists {needle}")
    entry: dict[str, Any] = {"page": spec.slug, "width": width, "url": url}
    if spec.math:
        with contextlib.suppress(Exception):  # not typeset in time: the checks below fail
            page.wait_for_function(
                "window.gossipMath && window.gossipMath.typesets >= 1 && "
                "document.querySelectorAll('.arithmatex').length === "
                "document.querySelectorAll('.arithmatex mjx-container').length",
                timeout=20_000,
            )
        page.wait_for_timeout(1_000)  # a second pass, if any, would show up by now
        formulas = page.locator(".arithmatex").count()
        rendered = page.locator(".arithmatex mjx-container").count()
        typesets = page.evaluate("window.gossipMath ? window.gossipMath.typesets : 0")
        text = page.locator("article").inner_text()
        entry.update(formulas=formulas, rendered=rendered, typesets=typesets)
        report.check(
            formulas > 0 and rendered == formulas,
            f"{label}: {rendered}/{formulas} formulas typeset",
        )
        report.check(typesets == 1, f"{label}: typeset once (passes: {typesets})")
        report.check(
            "$$" not in text and "\\(" not in text and "\\[" not in text, f"{label}: no raw TeX"
        )
    shot = out / f"{spec.slug}-{width}.png"
    page.screenshot(path=str(shot), full_page=False)
    entry["screenshot"] = shot.name
    if spec.figures:
        _check_figures(page, label, out / f"{spec.slug}-{width}", report, entry)
    entry["console_errors"] = errors
    report.check(not errors, f"{label}: no console errors {errors if errors else ''}".rstrip())
    report.pages.append(entry)


_FIGURES = """[...document.querySelectorAll('article img')].map(i => ({
    src: i.getAttribute('src'), natural: i.naturalWidth,
    shown: Math.round(i.getBoundingClientRect().width), boxed: !!i.closest('a.glightbox')}))"""


def _check_figures(
    page: Any, label: str, stem: Path, report: Report, entry: dict[str, Any]
) -> None:
    """Every figure loads; a scaled-down one opens larger on click; screenshots of both."""
    with contextlib.suppress(Exception):  # not loaded in time: the check below fails
        page.wait_for_function(
            "[...document.querySelectorAll('article img')].every(i => i.complete)",
            timeout=20_000,
        )
    figures = page.evaluate(_FIGURES)
    entry["figures"] = figures
    if not report.check(bool(figures), f"{label}: the page shows figures"):
        return
    broken = [f["src"] for f in figures if not f["natural"]]
    report.check(not broken, f"{label}: every figure loads {broken or ''}".rstrip())
    squeezed = [f["src"] for f in figures if f["natural"] > f["shown"] + 1 and not f["boxed"]]
    report.check(
        not squeezed, f"{label}: every scaled-down figure opens on click {squeezed or ''}".rstrip()
    )
    # the most scaled-down figure: on screen, then enlarged
    i = max(range(len(figures)), key=lambda k: figures[k]["natural"] / max(figures[k]["shown"], 1))
    figure = page.locator("article img").nth(i)
    figure.scroll_into_view_if_needed()
    page.screenshot(path=f"{stem}-figure.png")
    figure.click()
    big = page.locator(".glightbox-container .gslide.current img")
    with contextlib.suppress(Exception):  # no lightbox: the check below fails
        big.wait_for(state="visible", timeout=10_000)
        page.wait_for_timeout(800)  # the opening animation
    shown, natural = figures[i]["shown"], figures[i]["natural"]
    enlarged = round(big.bounding_box()["width"]) if big.count() else 0
    entry["enlarged"] = {"src": figures[i]["src"], "shown": shown, "enlarged": enlarged}
    report.check(
        enlarged > shown or (enlarged and enlarged >= natural - 1),
        f"{label}: clicking {figures[i]['src']} ({natural} px, shown at {shown}) "
        f"opens it at {enlarged} px",
    )
    page.screenshot(path=f"{stem}-lightbox.png")
    # still scaled to the screen: a click zooms to full size (on a phone, glightbox zooms
    # by pinching instead, which this check does not do)
    if 0 < enlarged < natural - 1 and page.viewport_size["width"] >= 1024:
        big.click()
        page.wait_for_timeout(800)
        zoomed = round(big.bounding_box()["width"])
        entry["enlarged"]["zoomed"] = zoomed
        report.check(zoomed > enlarged, f"{label}: a click on it zooms it to {zoomed} px")
    page.keyboard.press("Escape")
    with contextlib.suppress(Exception):
        page.locator(".glightbox-container").wait_for(state="detached", timeout=5_000)
    report.check(
        not page.locator(".glightbox-container").count(), f"{label}: Escape closes the figure"
    )


def _check_search(page: Any, base: str, width: str, out: Path, report: Report) -> None:
    page.goto(base, wait_until="load")
    label = f"[{width}] search"
    if width == "phone":
        page.locator("label.md-header__button[for='__search']").click()
    else:
        page.locator("input.md-search__input").click()
    # The index loads in a web worker; a query typed before it is ready can be dropped.
    with contextlib.suppress(Exception):
        page.wait_for_function(
            "(document.querySelector('.md-search-result__meta') || {}).textContent "
            "!== 'Initializing search'",
            timeout=20_000,
        )
    box = page.locator("input.md-search__input")
    results = page.locator(".md-search-result__item")
    for _attempt in range(3):
        box.fill("")
        box.press_sequentially("PushSum", delay=20)
        with contextlib.suppress(Exception):  # no results in time: retried, then reported
            results.first.wait_for(timeout=7_000)
        if results.count():
            break
    found = results.count()
    titles = results.all_inner_texts()[:5]
    report.check(
        found > 0 and any("PushSum" in t for t in titles),
        f"{label}: 'PushSum' finds {found} results",
    )
    page.screenshot(path=str(out / f"search-{width}.png"))
    report.pages.append({"page": "search", "width": width, "results": found})


def rooted_links(html: str) -> list[str]:
    """The root-relative links of a page (``href="/gossip/..."``, the theme's config too).

    They work only when the site is served at that very path: not from a folder, nor
    from another path.
    """
    found = re.findall(r"""(?:href|src|action)=["']?(/(?!/)[^"'\s>]*)""", html)
    config = re.search(r'<script id="__config" type="application/json">(.*?)</script>', html, re.S)
    if config:
        settings = json.loads(config.group(1))
        found += [settings[k] for k in ("base", "search") if str(settings.get(k)).startswith("/")]
    return found


_STYLED = "getComputedStyle(document.querySelector('.md-header')).position === 'sticky'"


def _check_404(page: Any, base: str, width: str, site: Path, report: Report) -> None:
    label = f"[{width}] 404"
    rooted = rooted_links((site / "404.html").read_text())
    report.check(not rooted, f"{label}: 404.html has no root-relative links {rooted[:3]}")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    response = page.goto(base + "no/such/page/", wait_until="load")
    report.check(
        response is not None and response.status == 404, f"{label}: missing page answers 404"
    )
    styled = page.evaluate(
        f"[...document.styleSheets].some(s => s.href && s.href.startsWith('{base}assets/'))"
        f" && {_STYLED}"
    )
    report.check(bool(styled), f"{label}: 404 page loads the site's stylesheet under {PREFIX}")
    links = page.evaluate(
        "[document.querySelector('a.md-logo').href, "
        "document.querySelector('article a').href, "
        "(document.querySelector('a.md-nav__link[href$=\"getting-started/\"]') || {}).href]"
    )
    want = [base, base, base + "getting-started/"]
    report.check(links == want, f"{label}: its home and nav links lead into the site {links}")
    report.check(not errors, f"{label}: no page errors {errors if errors else ''}".rstrip())
    page.goto((site / "404.html").resolve().as_uri(), wait_until="load")
    styled = page.evaluate(_STYLED)
    home = page.evaluate("document.querySelector('a.md-logo').href")
    report.check(
        bool(styled) and home == (site.resolve() / "index.html").parent.as_uri() + "/",
        f"{label}: opened from the folder, 404.html is styled and links home ({home})",
    )


def run(site: Path, out: Path, browser_path: str) -> Report:
    """Run every check and return the report."""
    from playwright.sync_api import sync_playwright

    report = Report()
    out.mkdir(parents=True, exist_ok=True)
    with serve(site) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, headless=True)
        try:
            for width, (w, h) in WIDTHS.items():
                context = browser.new_context(viewport={"width": w, "height": h})

                def gate(route: Any) -> None:
                    url = urlsplit(route.request.url)
                    if url.scheme == "file" or url.hostname in ("127.0.0.1", "localhost"):
                        route.continue_()
                    else:
                        report.blocked.add(route.request.url)
                        route.abort()

                context.route("**/*", gate)
                for spec in PAGES:
                    page = context.new_page()  # a tab per page: its console is its own
                    _check_page(page, base, spec, width, out, report)
                    page.close()
                page = context.new_page()
                _check_search(page, base, width, out, report)
                _check_404(page, base, width, site, report)
                context.close()
        finally:
            browser.close()
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--site", type=Path, default=Path("site"), help="the built site (default: site)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("site-check"), help="screenshots and report.json"
    )
    parser.add_argument("--browser", help="Chromium executable (default: chromium on PATH)")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        parser.error(f"--site {args.site} holds no index.html; build the site first (nox -s docs)")
    report = run(args.site, args.out, _find_browser(args.browser))
    summary = {
        "passed": not report.failures,
        "failures": report.failures,
        "blocked_requests": sorted(report.blocked),
        "pages": report.pages,
    }
    (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{len(report.failures)} failures; {len(report.blocked)} outside requests blocked; "
        f"screenshots in {args.out}/"
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())

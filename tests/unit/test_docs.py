"""The documentation checked against the repository and the code, where a test can check it.

- every link between the repository's Markdown files points at a file that exists, and every
  `#anchor` at a heading of its target, slugged the way GitHub does;
- docs/architecture.md names every module under api/ and no module that does not exist;
- docs/api.md's error table lists every `code` a client can get, with its status, and nothing
  else.
"""

from __future__ import annotations

import ast
import html
import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

from api import errors
from api import exceptions as exc

REPO = Path(__file__).resolve().parents[2]
API = REPO / "api"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# `](target)` or `](target "title")`: the end of an inline link or image, whatever its text
# (the text can span lines, or hold an image, as the README's screenshot link does).
INLINE_TARGET = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_TARGET = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files() -> list[Path]:
    """The repository's tracked Markdown files (every one outside hidden folders and the
    virtualenv when git is not there to ask)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "*.md"], cwd=REPO, capture_output=True, check=True
        ).stdout.decode()
        files = [REPO / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = [
            path
            for path in REPO.rglob("*.md")
            if not any(part.startswith(".") for part in path.relative_to(REPO).parts)
        ]
    return sorted(path for path in files if path.is_file())


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a code block's `#` is not a heading, nor its
    `](x)` a link); fenced lines become empty so line numbers stay right."""
    out, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): the rendered text, lowercased,
    every character that is not a letter, digit, `_`, space or hyphen removed, and each space
    turned into a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[A-Za-z/][^>]*>", "", text)  # HTML tags render as nothing
    text = html.unescape(text).lower()
    kept = "".join(
        ch
        for ch in text
        if ch in " -" or unicodedata.category(ch)[0] in "LMN" or unicodedata.category(ch) == "Pc"
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and reference definition outside code."""
    out = []
    lines = prose_lines(path.read_text())
    text = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), "\n".join(lines))
    for pattern in (INLINE_TARGET, REFERENCE_TARGET):
        for match in pattern.finditer(text):
            out.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return sorted(out)


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """What is wrong with a Markdown file's links to files of the repository at `root`."""
    problems = []
    where = path.relative_to(root)
    for line, target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue  # a web address: not this repository's business
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        if not file_part:
            resolved = path
        elif file_part.startswith("/"):
            resolved = root / file_part.lstrip("/")  # GitHub: from the repository's root
        else:
            resolved = path.parent / file_part
        if not resolved.exists():
            problems.append(f"{where}:{line}: {target}: no such file")
            continue
        if anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            problems.append(f"{where}:{line}: {target}: no heading with that anchor")
    return problems


def test_github_slugs():
    assert slug("GET /api/status/&lt;job_id&gt;") == "get-apistatusjob_id"
    assert slug("The tracker, and why exactly one runs") == "the-tracker-and-why-exactly-one-runs"
    assert slug("Request fields (`POST /api/generate`)") == "request-fields-post-apigenerate"
    assert slug("Old and new ComfyUI") == "old-and-new-comfyui"
    assert slug("A [linked](x.md) heading") == "a-linked-heading"


def test_a_repeated_heading_gets_a_number(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n```\n# not a heading\n```\n## Notes\n## Notes\n")
    assert anchors(page) == {"notes", "notes-1", "notes-2"}


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[ok](other.md#here) [self](#top) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [no anchor](other.md#there) `[in code](nope.md)`\n"
        "```\n[in a block](nope.md)\n```\n[wrong here](#nowhere)\n"
    )
    assert broken_links(page, tmp_path) == [
        "page.md:3: missing.md: no such file",
        "page.md:3: other.md#there: no heading with that anchor",
        "page.md:7: #nowhere: no heading with that anchor",
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_anchor_resolves(path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


# --- docs/architecture.md names every module -----------------------------------------------


def api_modules() -> list[Path]:
    return sorted(p for p in API.rglob("*.py") if p.name != "__init__.py")


def test_architecture_names_every_module():
    """A module under a subpackage is named with its folder (graphs/images.py and
    routes/images.py are different modules); a top-level one by its name or api/<name>."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = []
    for module in api_modules():
        relative = module.relative_to(API).as_posix()
        if "/" in relative:
            named = re.search(rf"(?<![\w/]){re.escape(relative)}", text)
        else:
            named = re.search(rf"(?:(?<![\w/])|api/){re.escape(relative)}", text)
        if not named:
            missing.append(f"api/{relative}")
    assert not missing, f"docs/architecture.md does not name {', '.join(missing)}"


def test_architecture_names_no_module_that_does_not_exist():
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"(?<![\w/.])((?:[\w-]+/)*[\w-]+\.py)\b", text))
    unknown = [
        name for name in sorted(named) if not ((REPO / name).is_file() or (API / name).is_file())
    ]
    assert not unknown, f"docs/architecture.md names modules that do not exist: {unknown}"


# --- docs/api.md lists every error code ----------------------------------------------------

# Codes of werkzeug's own errors (the handler in api/errors.py makes them from the error's
# name), and the one for a failure nobody foresaw. No class lists them, so a test below checks
# that the error-shape sweep provokes each.
WERKZEUG_CODES = {
    "not_found": 404,
    "method_not_allowed": 405,
    "request_entity_too_large": 413,
    "requested_range_not_satisfiable": 416,
    "too_many_requests": 429,
    "internal_error": 500,
}


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _status_of(cls: type) -> int:
    return next((errors.STATUS[c] for c in cls.__mro__ if c in errors.STATUS), 500)


def catalog_kinds() -> set[str]:
    """The codes UnknownChoice gets in api/graphs/catalog.py (the kind of name that is
    unknown), read from the module's source so that a new kind cannot be missed."""
    tree = ast.parse((API / "graphs" / "catalog.py").read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"unknown_[a-z]+", node.value)
    }


def client_codes() -> dict[str, set[int]]:
    """Every `code` a client can get, with the statuses it comes with."""
    codes: dict[str, set[int]] = {}
    for cls in _subclasses(exc.SidecarError):
        codes.setdefault(cls.code, set()).add(_status_of(cls))
    for kind in catalog_kinds():
        codes.setdefault(kind, set()).add(_status_of(exc.UnknownChoice))
    for code, status in WERKZEUG_CODES.items():
        codes.setdefault(code, set()).add(status)
    return codes


def documented_codes() -> dict[str, str]:
    """`code` -> its status cell, from the table under docs/api.md's "## Errors"."""
    text = (REPO / "docs" / "api.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    table = {}
    for row in lines[2:]:  # after the header and its |---| line
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[0].strip("`")] = cells[1]
    return table


def test_the_codes_without_a_class_are_ones_the_app_gives():
    from tests.unit.test_error_shape import CASES

    swept = {(case[4], case[3]) for case in CASES}
    # internal_error has its own test there (test_an_unexpected_failure_is_a_500...).
    for code, status in WERKZEUG_CODES.items():
        assert code == "internal_error" or (code, status) in swept, f"{code} is never provoked"


def test_the_catalog_kinds_are_read():
    assert {"unknown_sampler", "unknown_scheduler", "unknown_lora", "unknown_model"} <= (
        catalog_kinds()
    )


def test_api_md_lists_every_error_code_with_its_status():
    table = documented_codes()
    problems = []
    for code, statuses in sorted(client_codes().items()):
        if code not in table:
            problems.append(f"{code} is missing")
            continue
        shown = set(map(int, re.findall(r"\d{3}", table[code])))
        if shown != statuses:
            problems.append(f"{code} is documented as {table[code]}, not {sorted(statuses)}")
    assert not problems, "docs/api.md's error table: " + "; ".join(problems)


def test_api_md_lists_no_code_the_app_does_not_give():
    unknown = sorted(set(documented_codes()) - set(client_codes()))
    assert not unknown, f"docs/api.md documents codes nothing produces: {unknown}"

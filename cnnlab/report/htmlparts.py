"""The pieces of cnnlab's HTML pages: reading a run's files without trusting them, escaped tables and
text, links to files, and the page shell with its style, script and Content-Security-Policy.

A run folder is data, possibly hostile. Every text goes through :func:`html.escape`; a file is linked
only when it is a regular file (not a symbolic link, which could point anywhere) and by a
percent-encoded relative path; the policy lets the page load local images only and run nothing but
its own script, which marks each image ``data-loaded="yes"`` or ``"no"`` (a red frame) once the page
has loaded, for a reader and for the browser test.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from pathlib import Path
from urllib.parse import quote

from cnnlab.io import NotRegularFile, open_regular

MAX_TEXT = 200_000  # characters of one file shown on a page: a hostile run may hold a huge one

SCRIPT = (
    "addEventListener('load',()=>{for(const i of document.images)"
    "i.dataset.loaded=i.complete&&i.naturalWidth>0?'yes':'no'})"
)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'"
)
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1240px;padding:0 16px;color:#1f2328}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px;
margin-top:28px}h3{font-size:15px}.muted{color:#656d76}.problem{color:#9a6700}
.error{background:#ffebe9;border:1px solid #cf222e;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}.ok{color:#1a7f37}.bad{color:#cf222e}.warn{color:#9a6700}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #d0d7de}figcaption{color:#656d76}
img[data-loaded=no]{outline:3px solid #cf222e;min-width:40px;min-height:40px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px}
nav a{margin-right:12px}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def regular_file(path: Path) -> bool:
    """A file a page may read or link: it exists and is not a symbolic link."""
    return path.is_file() and not path.is_symlink()


def reached_without_links(path: Path, start: Path) -> bool:
    """``path`` is a regular file and no folder between ``start`` and it is a symbolic link: a page in
    ``start`` may link it without the link leading out (a linked ``report/`` could hold anything)."""
    here = Path(os.path.abspath(start))
    for part in Path(os.path.abspath(path)).relative_to(here).parts:
        here = here / part
        if here.is_symlink():
            return False
    return regular_file(here)


def read_text(path: Path) -> tuple[str | None, str | None]:
    """A text file's content (cut at :data:`MAX_TEXT`), or None and why it cannot be shown."""
    if not regular_file(path):
        return None, f"{path.name} is missing" + (
            " (a symbolic link is not followed)" if path.is_symlink() else ""
        )
    try:
        with open_regular(path) as f:  # swapped for a FIFO since the check: refused, not waited on
            text = f.read().decode(errors="replace")
    except NotRegularFile as exc:
        return None, f"{path.name} is {exc.kind}"
    except OSError as exc:
        return None, f"{path.name} could not be read ({exc.strerror})"
    return (text[:MAX_TEXT] + "\n... (cut)" if len(text) > MAX_TEXT else text), None


def read_json(path: Path) -> tuple[object, str | None]:
    """A JSON file's content, or None and why it cannot be shown."""
    text, problem = read_text(path)
    if text is None:
        return None, problem
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"{path.name} is not valid JSON ({exc})"


def href(path: Path, start: Path) -> str:
    """``path`` relative to the folder ``start``, percent-encoded for an ``href`` or ``src``."""
    return "/".join(quote(part) for part in path.relative_to(start).parts)


def number(value) -> str:
    """Floats with 4 decimals throughout (0.9011, 0.2500, 5.5065), tiny or huge ones in e-notation
    (a learning rate of 1.000e-05), NaN and None as '-', anything else as its text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e9 else f"{value:.3e}"
    return str(value)


def parsed(text: str):
    """A CSV cell as the number it spells (an int or a float), else the text: so it is formatted and
    aligned as a number."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def table(header: list, rows: list[list], *, raw: set[int] = frozenset()) -> str:
    """An HTML table; every cell is escaped except the columns in ``raw`` (already built HTML)."""

    def cell(i: int, value) -> str:
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        text = str(value) if i in raw else esc(number(value))
        return f"<td class=num>{text}</td>" if numeric else f"<td>{text}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def key_values(data: dict) -> str:
    """A two-column table of a flat dict (nested values shown as JSON)."""
    rows = [
        [k, v if isinstance(v, int | float | str) or v is None else json.dumps(v)] for k, v in data.items()
    ]
    return table(["key", "value"], rows)


def problem(text: str) -> str:
    return f"<p class=problem>{esc(text)}</p>"


def section(anchor: str, title: str, body: str) -> str:
    return f"<section id={anchor}><h2>{esc(title)}</h2>{body}</section>"


def figure(src: str, caption: str) -> str:
    """An image linked to itself (the full size), with a caption; ``src`` is already percent-encoded."""
    return (f'<figure><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(caption)}"></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")  # fmt: skip


def page(title: str, heading: str, nav: list[tuple[str, str]], body: str) -> str:
    """A whole page: ``nav`` is (anchor, label) pairs of its sections."""
    links = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in nav)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>"
        f"<body><h1>{esc(heading)}</h1><nav>{links}</nav>{body}</body></html>\n"
    )

"""A self-contained HTML report: sections of text, tables and images, the images embedded as data URIs
so the one file can be mailed or opened offline (`ar1 demo` writes its report.html with it).

    write_report("out/report.html", "AR1 demo", [Section("Results", text=["..."], table=Table(...),
                                                         images=[Figure("bev.png", "caption")])])
"""

from __future__ import annotations

import base64
import dataclasses
import html
import pathlib
from typing import Sequence

__all__ = ["Table", "Figure", "Section", "data_uri", "write_report"]

_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .3em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 9px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; max-width: 520px; }
.note { color: #555; font-size: 14px; }
"""


@dataclasses.dataclass(frozen=True)
class Table:
    """A table: column headers and rows of cells (already formatted strings or numbers)."""

    headers: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclasses.dataclass(frozen=True)
class Figure:
    """An image file to embed and its caption."""

    path: str | pathlib.Path
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
    heading: str
    text: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()


def data_uri(path: str | pathlib.Path) -> str:
    """The file as a `data:` URI (PNG, GIF, JPEG or SVG by suffix); ValueError for other kinds."""
    path = pathlib.Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed a {path.suffix or 'suffix-less'} file (known: {sorted(_MIME)})")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.3f}"
    return html.escape("-" if v is None else str(v))


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(path: str | pathlib.Path, title: str, sections: Sequence[Section], subtitle: str = "") -> pathlib.Path:
    """Writes the page; a missing image fails naming it (a report must not silently lack a figure)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f"<p class='note'>{html.escape(subtitle)}</p>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.heading)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in sec.text]
        parts += [_table(t) for t in sec.tables]
        for fig in sec.figures:
            if not pathlib.Path(fig.path).is_file():
                raise FileNotFoundError(f"report figure {fig.path} does not exist")
            parts.append(f"<figure><img src='{data_uri(fig.path)}' alt='{html.escape(fig.caption)}'>"
                         f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path

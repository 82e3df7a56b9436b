"""The one HTML renderer: a page is a title, a lead paragraph and a list of sections of blocks.

Blocks (plain dicts, built by :mod:`glfuse.reports.builders`):

* ``{"kind": "table", "header": [...], "rows": [[cell, ...]], "caption": str, "best": {(row, col), ...}}`` — cells are
  strings (escaped); ``best`` cells are bold and marked ▲;
* ``{"kind": "figure", "png": bytes, "caption": str, "width": int}`` — embedded as a base64 data URI;
* ``{"kind": "gallery", "items": [{"png": bytes, "caption": str}]}``;
* ``{"kind": "text", "text": str}`` (escaped, paragraphs on blank lines) and ``{"kind": "html", "html": str}``
  (trusted markup made by this package, e.g. from :func:`markdown_to_html`).

The page is self-contained (inline CSS, images inlined, no script, no network) and written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

__all__ = ["render_html", "write_page", "figure_png", "markdown_to_html", "table_block", "figure_block", "text_block"]

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #dde3ee;padding-bottom:.2em;margin-top:1.6em}
h3{margin-bottom:.3em} .lead{color:#4a5468} .meta{font-size:.85em;color:#6a7385}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.9em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d5dbe6;padding:3px 9px;text-align:right;vertical-align:top} td{white-space:nowrap}
table.left td{white-space:normal}
th{background:#eef2f8} td:first-child,th:first-child,table.left td,table.left th{text-align:left}
tr:nth-child(even) td{background:#f8fafc} td.best,tr:nth-child(even) td.best{font-weight:700;background:#e4f4e4}
caption{caption-side:bottom;text-align:left;font-size:.82em;color:#5a6478;padding-top:.3em}
figure{margin:.6em 0 1.2em} figcaption{font-size:.85em;color:#4a5468}
img{max-width:100%;height:auto;border:1px solid #e2e6ee}
.gallery{display:flex;flex-wrap:wrap;gap:12px} .gallery figure{margin:0;flex:1 1 460px;max-width:560px}
.scroll{overflow-x:auto}
code{background:#f0f2f6;padding:0 3px;border-radius:3px}
</style></head>
<body>
<h1>{{ title }}</h1>
{% if lead %}<p class="lead">{{ lead }}</p>{% endif %}
{% for s in sections %}
<section><h2>{{ s.title }}</h2>
{% for b in s.blocks %}
{% if b.kind == "table" %}<div class="scroll"><table{% if b.left %} class="left"{% endif %}>
{% if b.caption %}<caption>{{ b.caption }}</caption>{% endif %}
<thead><tr>{% for h in b.header %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in b.rows %}{% set ri = loop.index0 %}<tr>{% for c in row %}
{% if (ri, loop.index0) in b.best %}<td class="best">▲ {{ c }}</td>{% else %}<td>{{ c }}</td>{% endif %}
{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{% elif b.kind == "figure" %}<figure>
<img src="data:image/png;base64,{{ b.b64 }}" alt="{{ b.caption }}"{% if b.width %} width="{{ b.width }}"{% endif %}>
{% if b.caption %}<figcaption>{{ b.caption }}</figcaption>{% endif %}</figure>
{% elif b.kind == "gallery" %}<div class="gallery">{% for it in b["items"] %}
<figure><img src="data:image/png;base64,{{ it.b64 }}" alt="{{ it.caption }}"><figcaption>{{ it.caption }}</figcaption></figure>
{% endfor %}</div>
{% elif b.kind == "text" %}{% for para in b.paras %}<p>{{ para }}</p>{% endfor %}
{% elif b.kind == "html" %}{{ b.html | safe }}
{% endif %}
{% endfor %}
</section>
{% endfor %}
<p class="meta">{{ footer }}</p>
</body></html>
"""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prepare(block: dict[str, Any]) -> dict[str, Any]:
    b = dict(block)
    if b["kind"] == "figure":
        b["b64"] = _b64(b["png"])
    elif b["kind"] == "gallery":
        b["items"] = [{**it, "b64": _b64(it["png"])} for it in b["items"]]
    elif b["kind"] == "table":
        b["best"] = set(b.get("best") or ())
        b["rows"] = [[("" if c is None else str(c)) for c in r] for r in b["rows"]]
    elif b["kind"] == "text":
        b["paras"] = [p.strip() for p in str(b["text"]).split("\n\n") if p.strip()]
    return b


def render_html(title: str, sections: list[dict[str, Any]], *, lead: str = "", footer: str = "") -> str:
    """The page as a string (``sections``: ``[{"title": str, "blocks": [block, ...]}]``)."""
    from jinja2 import Environment

    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    secs = [{"title": s["title"], "blocks": [_prepare(b) for b in s["blocks"]]} for s in sections if s.get("blocks")]
    if not footer:
        from glfuse import __version__

        footer = f"Written by glfuse {__version__}. Self-contained page: every image is embedded."
    return env.from_string(_TEMPLATE).render(title=title, lead=lead, sections=secs, footer=footer)


def write_page(path: str | Path, title: str, sections: list[dict[str, Any]], *, lead: str = "",
               overwrite: bool = True) -> Path:
    """Render and write atomically to ``path``; refuses to replace an existing file unless ``overwrite``."""
    from glfuse.checkpoint import atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    page = render_html(title, sections, lead=lead)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib ``Figure``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def table_block(header: list[str], rows: list[list[Any]], caption: str = "",
                best: set[tuple[int, int]] | None = None, left: bool = False) -> dict[str, Any]:
    """A table block; ``best``: ``(row, column)`` cells to mark; ``left``: left-align text columns."""
    return {"kind": "table", "header": header, "rows": rows, "caption": caption, "best": best or set(), "left": left}


def figure_block(png: bytes, caption: str = "", width: int | None = None) -> dict[str, Any]:
    return {"kind": "figure", "png": png, "caption": caption, "width": width}


def text_block(text: str) -> dict[str, Any]:
    return {"kind": "text", "text": text}


def _inline_md(s: str) -> str:
    s = html.escape(s.strip())
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def markdown_to_html(md: str) -> str:
    """The small Markdown subset glfuse writes (headings, ``-`` lists, pipe tables, paragraphs) as HTML."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i].rstrip()
        if ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            head = "".join(f"<th>{_inline_md(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
            continue
        m = re.match(r"(#{1,4})\s+(.*)", ln)
        if m:
            level = min(len(m.group(1)) + 2, 5)  # the page has h1 (report title) and h2 (section titles) already
            out.append(f"<h{level}>{_inline_md(m.group(2))}</h{level}>")
        elif ln.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline_md(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif ln:
            out.append(f"<p>{_inline_md(ln)}</p>")
        i += 1
    return "\n".join(out)

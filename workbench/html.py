"""Self-contained HTML pages (figures embedded as base64 PNG): the study report and the
monitoring report share these pieces, so a page opens anywhere, offline, as one file."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-top: 0.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ddd;
padding: 3px 8px; text-align: left; font-size: 0.92em; } th { background: #f4f4f4; }
figure { display: inline-block; margin: 0.4em; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #eee; } figcaption { font-size: 0.85em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def escape(value: Any) -> str:
    return html.escape(str(value))


def image(data: bytes, caption: str) -> str:
    """A PNG embedded in the page, with its caption."""
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f"<figure><img alt='{escape(caption)}' src='data:image/png;base64,{encoded}'>"
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, sections: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )


def write_atomic(path: Path, text: str) -> None:
    """Written beside, then renamed: a reader never sees half a page."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)

"""A report's page: Markdown blocks, written once as report.md and turned into a self-contained index.html."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path

import markdown
import pandas as pd
from markdown.treeprocessors import Treeprocessor
from matplotlib.figure import Figure

from ggt_search.files import atomic_write, make_folder, write_text

# Compact, so that an ablation's verdict table and forest figure fit the first screen; and the page never
# scrolls sideways at a laptop's width: a wide table scrolls inside its own box, long words (hashes, command
# lines, paths) break, figures shrink to the column.
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1320px;margin:1em auto;padding:0 1em;color:#222;font-size:15px;"
    "overflow-wrap:anywhere}"
    "h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.25em;margin:.4em 0}h3{font-size:1.1em;margin:.6em 0 .3em}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:13px;display:block;max-width:100%;overflow-x:auto}"
    "td,th{padding:1px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap;overflow-wrap:normal}"
    "img{max-width:100%;height:auto}"
    "pre{background:#f5f5f5;padding:1em;overflow-x:auto}"
)


class Page:
    """The report as Markdown blocks (headings, paragraphs, tables, figures with their captions), in order."""

    def __init__(self, out: Path, title: str):
        self.out, self.title = out, title
        self.blocks = [f"# {title}"]
        make_folder(out)

    def heading(self, text: str, level: int = 2):
        self.blocks.append(f"{'#' * level} {text}")

    def text(self, text: str):
        self.blocks.append(text)

    def table(self, frame: pd.DataFrame, floatfmt: str | list[str] = ".4f"):
        """Numbers to 4 decimals; `floatfmt` per column where one needs another format (a learning rate's 3e-05)."""
        self.blocks.append(frame.to_markdown(index=False, floatfmt=floatfmt))

    def figure(self, fig: Figure, name: str, caption: str):
        """The figure as <slug of name>.png beside the report (a name may hold a study's name, any text)."""
        file = f"{slug(name)}.png"
        atomic_write(self.out / file, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        self.blocks.append(f"![{caption}]({file})\n\n*{caption}*")

    def write(self):
        text = "\n\n".join(self.blocks) + "\n"
        write_text(self.out / "report.md", text)
        body = markdown_to_html(text, self.out)
        head = f"<meta charset='utf-8'><title>{html.escape(self.title)}</title><style>{STYLE}</style>"
        write_text(self.out / "index.html", f"<!doctype html><html><head>{head}</head><body>{body}</body></html>")


def slug(name: str) -> str:
    """A file name made of `name`'s letters, digits, '.', '_' and '-' only (never a path), and unique:
    a name that had to change carries 8 hex digits of its sha256."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:80] or "figure"
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def markdown_to_html(text: str, folder: Path) -> str:
    """The HTML of a report's Markdown, by Python-Markdown with tables. Raw HTML and links are off, so every
    name and text shows as written (a `<` in it is escaped, a `[x](javascript:...)` stays text), and each
    image beside the report is embedded."""
    converter = markdown.Markdown(extensions=["tables"])
    converter.preprocessors.deregister("html_block")
    for pattern in (
        "html",
        "link",
        "reference",
        "short_reference",
        "autolink",
        "automail",
        "image_reference",
        "short_image_ref",
    ):
        converter.inlinePatterns.deregister(pattern)
    converter.treeprocessors.register(EmbedImages(converter, folder), "embed_images", 15)  # after inline (20)
    return converter.convert(text)


class EmbedImages(Treeprocessor):
    """Each image's file, named relative to the report's folder, becomes a base64 data URI: one self-contained page."""

    def __init__(self, md: markdown.Markdown, folder: Path):
        super().__init__(md)
        self.folder = folder

    def run(self, root):
        figures = {path.name for path in self.folder.glob("*.png")}
        for image in root.iter("img"):
            if image.get("src") not in figures:  # an image a name wrote: no file of the report, never a URL
                image.set("src", "")
                continue
            data = base64.b64encode((self.folder / image.get("src")).read_bytes()).decode()
            image.set("src", f"data:image/png;base64,{data}")

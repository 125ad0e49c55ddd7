"""A report's page: Markdown blocks, written once as report.md and turned into a self-contained index.html."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import markdown
import pandas as pd
from markdown.treeprocessors import Treeprocessor
from matplotlib.figure import Figure

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
    "img{max-width:100%}"
    "pre{background:#f5f5f5;padding:1em;overflow-x:auto}"
)


class Page:
    """The report as Markdown blocks (headings, paragraphs, tables, figures with their captions), in order."""

    def __init__(self, out: Path, title: str):
        self.out, self.title = out, title
        self.blocks = [f"# {title}"]
        out.mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2):
        self.blocks.append(f"{'#' * level} {text}")

    def text(self, text: str):
        self.blocks.append(text)

    def table(self, frame: pd.DataFrame, floatfmt: str | list[str] = ".4f"):
        """Numbers to 4 decimals; `floatfmt` per column where one needs another format (a learning rate's 3e-05)."""
        self.blocks.append(frame.to_markdown(index=False, floatfmt=floatfmt))

    def figure(self, fig: Figure, name: str, caption: str):
        fig.savefig(self.out / f"{name}.png", dpi=110, bbox_inches="tight")
        self.blocks.append(f"![{caption}]({name}.png)\n\n*{caption}*")

    def write(self):
        text = "\n\n".join(self.blocks) + "\n"
        (self.out / "report.md").write_text(text)
        body = markdown_to_html(text, self.out)
        head = f"<meta charset='utf-8'><title>{html.escape(self.title)}</title><style>{STYLE}</style>"
        (self.out / "index.html").write_text(f"<!doctype html><html><head>{head}</head><body>{body}</body></html>")


def markdown_to_html(text: str, folder: Path) -> str:
    """The HTML of a report's Markdown, by Python-Markdown with tables. Raw HTML is off, so every name and
    text shows as written (a `<` in it is escaped), and each image beside the report is embedded."""
    converter = markdown.Markdown(extensions=["tables"])
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    converter.treeprocessors.register(EmbedImages(converter, folder), "embed_images", 15)  # after inline (20)
    return converter.convert(text)


class EmbedImages(Treeprocessor):
    """Each image's file, named relative to the report's folder, becomes a base64 data URI: one self-contained page."""

    def __init__(self, md: markdown.Markdown, folder: Path):
        super().__init__(md)
        self.folder = folder

    def run(self, root):
        for image in root.iter("img"):
            data = base64.b64encode((self.folder / image.get("src")).read_bytes()).decode()
            image.set("src", f"data:image/png;base64,{data}")

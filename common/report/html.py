"""The HTML form of a report: the Markdown rendered, plots embedded as data URIs, no network access needed."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1b1f24;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.7em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
blockquote { color: #57606a; border-left: 4px solid #d0d7de; margin: 0; padding: .2em 1em; }
code { background: #f3f4f6; padding: .1em .3em; border-radius: 4px; font-size: 90%; }
.table-wrap { overflow-x: auto; margin: .8em 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #e5e7eb; }
figcaption { color: #57606a; font-size: 13px; }
"""


# Link targets that would run code when clicked ([x](javascript:...) inside an error message).
_UNSAFE_URL = re.compile(r'\b(href|src)="\s*(?:javascript|vbscript|data(?!:image/png;base64,)|file):[^"]*"', re.I)


def _markdown_without_raw_html() -> markdown.Markdown:
    """Python-Markdown passes raw HTML through; a report embeds text from result files (error messages, framework
    warnings, recipe descriptions), so raw HTML is shown as text instead: `<img onerror=...>` cannot run."""
    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md


def render_html(md_text: str, title: str, asset_dir: Path) -> str:
    """Markdown to a standalone page; every `![..](plots/x.png)` becomes an embedded PNG."""
    body = _markdown_without_raw_html().convert(md_text)
    body = _UNSAFE_URL.sub(r'\1="#"', body)
    body = re.sub(r"<table>", '<div class="table-wrap"><table>', body)
    body = re.sub(r"</table>", "</table></div>", body)

    def embed(m: re.Match) -> str:
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
        src, alt = attrs.get("src", ""), attrs.get("alt", "")
        if not src.endswith(".png") or src.startswith("data:"):
            return m.group(0)
        path = asset_dir / html.unescape(src)
        if not path.is_file():
            raise FileNotFoundError(f"report image {path} is missing")
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{alt}" src="data:image/png;base64,{data}">'

    body = re.sub(r"<img [^>]*>", embed, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")

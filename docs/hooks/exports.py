"""mkdocs hook: the table of the top-level lazy exports of ``petuq_sirf`` (``docs/api/index.md``).

The names come from ``petuq_sirf._EXPORTS`` at build time, so the page cannot drift from the package; each
links (autorefs) to the object's entry on its package's page.
"""

from __future__ import annotations

MARKER = "<!-- petuq-exports -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    import importlib
    import sys

    import petuq_sirf

    rows = ["| name | package | summary |", "|---|---|---|"]
    for name in sorted(petuq_sirf._EXPORTS, key=str.lower):
        package = petuq_sirf._EXPORTS[name]
        target = f"petuq_sirf.{package}.{name}"
        obj = getattr(importlib.import_module(f"petuq_sirf.{package}"), name)
        if f"petuq_sirf.{package}.{name}" in sys.modules:  # a submodule of the same name
            target = f"{obj.__module__}.{name}"
        summary = " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())
        if summary.startswith(f"{name}("):  # a dataclass's generated signature, not a docstring
            summary = ""
        summary = summary.split(". ")[0].rstrip(".").replace("|", "\\|")
        rows.append(f"| [`{name}`][{target}] | [`petuq_sirf.{package}`]({package}.md) | {summary} |")
    return markdown.replace(MARKER, "\n".join(rows))

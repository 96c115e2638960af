"""The paper-style OOD table of a report (rendered by report, the CLI and Hub model cards)."""

from __future__ import annotations

import html
import re
from typing import Any

# What can make Markdown of inline text: emphasis, code, links and images (both need "["), table cells, strike,
# a heading. Parentheses, braces, "+" and "!" do nothing without them, so they are left as written (no stray "\(").
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def markdown_text(value: object) -> str:
    """A value from a user or an artifact as inert Markdown text: HTML escaped (no tags, no script), Markdown
    punctuation backslash-escaped (no links, no javascript: URLs, no table breaks), one line."""
    text = " ".join(str(value).splitlines())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per OOD set, then the averages: near- and far-OOD apart where the report has both groups (as
    OpenOOD reports them), and over every set."""
    rows = []
    for name, m in report["ood"].items():
        rows.append([name, f"{100 * m['auroc']:.2f}", f"{100 * m['fpr']:.2f}", f"{100 * m['aupr_in']:.2f}",
                     f"{100 * m['aupr_out']:.2f}", str(m["n_ood"])])
    averages = [("near-OOD average", report.get("average_near")), ("far-OOD average", report.get("average_far")),
                ("average", report["average"])]
    for label, a in averages:
        if a:
            rows.append([label, f"{100 * a['auroc']:.2f}", f"{100 * a['fpr']:.2f}", f"{100 * a['aupr_in']:.2f}",
                         f"{100 * a['aupr_out']:.2f}", ""])
    return rows


TABLE_HEADER = ["OOD set", "AUROC %", "FPR@95 %", "AUPR-In %", "AUPR-Out %", "n"]


def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(markdown_text(c) for c in r) + " |" for r in table_rows(report)]
    return "\n".join(lines)

"""The paper-style OOD table of a report (rendered by report, the CLI and Hub model cards)."""

from __future__ import annotations

from typing import Any


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, m in report["ood"].items():
        rows.append([name, f"{100 * m['auroc']:.2f}", f"{100 * m['fpr']:.2f}", f"{100 * m['aupr_in']:.2f}",
                     f"{100 * m['aupr_out']:.2f}", str(m["n_ood"])])
    a = report["average"]
    rows.append(["average", f"{100 * a['auroc']:.2f}", f"{100 * a['fpr']:.2f}", f"{100 * a['aupr_in']:.2f}",
                 f"{100 * a['aupr_out']:.2f}", ""])
    return rows


TABLE_HEADER = ["OOD set", "AUROC %", "FPR@95 %", "AUPR-In %", "AUPR-Out %", "n"]


def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    return "\n".join(lines)

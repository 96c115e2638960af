"""A report as a page: the HTML a user opens (plots, the threshold, per-class effects, the images behind the
numbers) and its Markdown twin. Everything from a score file or the command line is escaped: names are data,
never markup."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from .table import TABLE_HEADER, markdown_table, markdown_text, table_rows

FIGURE_TITLES = {"histogram": "Score distributions", "roc": "ROC curves (ID = positive)",
                 "similarity": "Similarity to positive vs negative prompts (paper Fig. 3)"}
WORST_CLASSES = 10  # shown in the open; the full list is folded below

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;font-size:.92em} code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:4px 8px}
td{text-align:right} td:first-child,th:first-child{text-align:left} tr.avg td{font-weight:600;background:#fafafa}
img.plot{max-width:100%} .gallery{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:132px;font-size:.75em} figure img{width:112px;height:112px;object-fit:contain;background:#eee}
figcaption{overflow-wrap:break-word} .missing{width:112px;height:112px;background:#eee;color:#666;display:flex;
align-items:center;justify-content:center;text-align:center;font-size:.8em;padding:4px;box-sizing:border-box}
.path{color:#777}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def threshold_sentence(report: dict[str, Any]) -> str:
    """What the decision threshold is and what it does, in words (plain text; the caller escapes)."""
    threshold = report.get("threshold")
    if not threshold:
        return ("No decision threshold: these score files carry none (score with stored, --calibrate or "
                "--threshold, or give report --threshold); the metrics above do not need one.")
    decision = report["decision"]
    accepted = "; ".join(f"accepts {100 * d['ood_accepted']:.1f}% of {name}" for name, d in decision["ood"].items())
    if "per_class" in threshold:
        values = list(threshold["per_class"].values())
        rule = (f"Per-class thresholds, {min(values):.6g} to {max(values):.6g} over {len(values)} predicted classes "
                f"({threshold['source']}): an image scoring below the threshold of its predicted class is flagged OOD.")
    else:
        rule = f"Threshold {threshold['value']:.6g} ({threshold['source']}): images scoring below it are flagged OOD."
    promise = f" {threshold['promise'][0].upper()}{threshold['promise'][1:]}." if threshold.get("promise") else ""
    return (f"{rule}{promise} It keeps {100 * decision['id_kept']:.1f}% of the {report['id']['n']} ID images; "
            f"{accepted}.")


def render_html(report: dict[str, Any], figures: dict[str, bytes], thumbs: dict[str, tuple[str | None, str | None]]
                ) -> str:
    provenance = report["provenance"]
    accuracy = report["id"]["accuracy"]
    meta = [f"scorer <code>{_e(report['scorer'])}</code>", f"prompts <code>{_e(report['prompts_id'])}</code>",
            f"{report['id']['n']} ID images" + (f", ID accuracy {100 * accuracy:.2f}%" if accuracy is not None
                                                else ""),
            f"FPR convention <b>{_e(report['fpr_convention'])}</b>: {_e(report['fpr_definition'])}",
            f"AUPR: {_e(report['aupr_estimator'])}",
            f"created {_e(provenance['created'])} by negprompt {_e(provenance['negprompt'])}"]
    if provenance.get("command"):
        meta.append(f"command <code>{_e(provenance['command'])}</code>")
    files = [f"ID <code>{_e(report['id']['file'])}</code>"] + [f"{_e(n)} <code>{_e(o['file'])}</code>"
                                                               for n, o in report["ood"].items()]
    meta.append("score files: " + ", ".join(files))
    averages = {"average", "near-OOD average", "far-OOD average"}
    rows = "".join(f"<tr{' class=avg' if r[0] in averages else ''}>" + "".join(f"<td>{_e(c)}</td>" for c in r)
                   + "</tr>" for r in table_rows(report))
    head = "".join(f"<th>{_e(h)}</th>" for h in TABLE_HEADER)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>negprompt OOD report</title>",
             f"<style>{STYLE}</style></head><body><h1>negprompt OOD report</h1>",
             "<p class=meta>" + " · ".join(meta) + "</p>",
             f"<h2>Metrics</h2><table><tr>{head}</tr>{rows}</table>",
             f"<h2>Decision threshold</h2><p>{_e(threshold_sentence(report))}</p>"]
    for name in ("histogram", "roc", "similarity"):
        if name in figures:
            data = base64.b64encode(figures[name]).decode()
            parts.append(f"<h2>{_e(FIGURE_TITLES[name])}</h2><img class=plot alt='{_e(FIGURE_TITLES[name])}' "
                         f"src='data:image/png;base64,{data}'>")
    if report.get("per_class"):
        parts.append(_per_class_html(report["per_class"]))
    if report.get("examples"):
        parts.append(_galleries_html(report, thumbs))
    elif report.get("images_note"):
        parts.append(f"<h2>Images</h2><p>{_e(report['images_note'])}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def _per_class_html(per_class: list[dict[str, Any]]) -> str:
    def table(entries: list[dict[str, Any]]) -> str:
        body = "".join(f"<tr><td>{_e(c['class'])}</td><td>{c['images']}</td><td>{100 * c['kept']:.1f}</td></tr>"
                       for c in entries)
        return f"<table><tr><th>ID class</th><th>images</th><th>kept %</th></tr>{body}</table>"

    text = ("<h2>Which ID classes the threshold hurts</h2><p>Share of each class's ID images kept as "
            "in-distribution at the threshold (true class where the scores are --labeled, else the predicted "
            "class), lowest first.</p>" + table(per_class[:WORST_CLASSES]))
    if len(per_class) > WORST_CLASSES:
        text += f"<details><summary>all {len(per_class)} classes</summary>{table(per_class)}</details>"
    return text


def path_breaks(path: str) -> str:
    """A path escaped for HTML, allowed to wrap after each separator (``<wbr>``) rather than mid-word."""
    return "/<wbr>".join(_e(part) for part in str(path).split("/"))


def _gallery(entries: list[dict[str, Any]], thumbs: dict[str, tuple[str | None, str | None]]) -> str:
    if not entries:
        return "<p>None.</p>"
    items = []
    for entry in entries:
        uri, note = thumbs.get(entry["path"], (None, "not rendered"))
        picture = (f"<img loading=lazy src='{uri}' alt='{_e(entry['path'])}'>" if uri
                   else f"<div class=missing>{_e(note)}</div>")
        label = f" · label {_e(entry['label'])}" if entry.get("label") else ""
        items.append(f"<figure>{picture}<figcaption>score {entry['score']:.4g} · predicted "
                     f"{_e(entry['prediction'])}{label}<br><span class=path>{path_breaks(entry['path'])}</span>"
                     "</figcaption></figure>")
    return f"<div class=gallery>{''.join(items)}</div>"


def _galleries_html(report: dict[str, Any], thumbs: dict[str, tuple[str | None, str | None]]) -> str:
    found = report["examples"]
    with_threshold = bool(report.get("threshold"))
    parts = [f"<h2>Images</h2><p>{_e(report['images_note'])}</p>",
             "<h3>" + ("ID images rejected as OOD (false alarms), lowest scores first" if with_threshold
                       else "Least ID-like ID images") + "</h3>", _gallery(found["false_alarms"], thumbs)]
    for name in report["ood"]:
        parts.append(f"<h3>{_e(name)}: " + ("OOD images accepted as ID (misses), highest scores first"
                                            if with_threshold else "most ID-like OOD images") + "</h3>")
        parts.append(_gallery(found["misses"][name], thumbs))
        parts.append(f"<h3>{_e(name)}: most clearly OOD</h3>")
        parts.append(_gallery(found["clearly_ood"][name], thumbs))
    return "".join(parts)


def code_span(value: object) -> str:
    """Text as a Markdown code span: shown exactly (paths and commands keep their underscores and parentheses)
    and inert, fenced with more backticks than it holds."""
    text = " ".join(str(value).splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_markdown(report: dict[str, Any], figure_names: list[str]) -> str:
    provenance = report["provenance"]
    accuracy = report["id"]["accuracy"]
    summary = (f"Scorer {markdown_text(report['scorer'])}, prompts {markdown_text(report['prompts_id'])}. "
               f"ID images: {report['id']['n']}"
               + (f", ID accuracy {100 * accuracy:.2f} %" if accuracy is not None else "")
               + f". FPR convention: **{markdown_text(report['fpr_convention'])}**: "
               f"{markdown_text(report['fpr_definition'])}. AUPR: {markdown_text(report['aupr_estimator'])}. "
               f"Created {markdown_text(provenance['created'])} by negprompt {markdown_text(provenance['negprompt'])}"
               + (f" with {code_span(provenance['command'])}" if provenance.get("command") else "") + ".")
    lines = ["# negprompt OOD report", "", summary, "", markdown_table(report), "", "## Decision threshold", "",
             markdown_text(threshold_sentence(report)), ""]
    for name in figure_names:
        lines += [f"## {FIGURE_TITLES[name]}", "", f"![{FIGURE_TITLES[name]}]({name}.png)", ""]
    if report.get("per_class"):
        lines += ["## Which ID classes the threshold hurts", "", "| ID class | images | kept % |", "|---|---|---|"]
        lines += [f"| {markdown_text(c['class'])} | {c['images']} | {100 * c['kept']:.1f} |"
                  for c in report["per_class"][:WORST_CLASSES]]
        lines.append("")
    if report.get("images_note"):
        lines += ["## Images", "", markdown_text(report["images_note"]) + " They are in report.html.", ""]
    return "\n".join(lines)

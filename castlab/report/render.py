"""The report's files: ``report.html`` (one self-contained page, pictures embedded), ``report.md`` and CSV tables
(``funnel.csv``, ``mask_review.csv``, ``caption_fields.csv``, ``lead_times.csv``, ``checkpoints.csv``)."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from castlab.workspace import write_text_atomic

SECTIONS = ("funnel", "identity", "captions", "training", "reviews")
TITLES = {"funnel": "Funnel", "identity": "Identities", "captions": "Captions",
          "training": "Training and evaluation", "reviews": "Review analytics"}


def tables(report: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The report's tables (header, rows), shared by the CSV files, the Markdown and the page."""
    funnel = [[scope, name, count] for scope, data in report["funnel"].items()
              for name, count in [*data["stages"].items(), *((f"rejected: {k}", v) for k, v in data["reasons"].items()),
                                  *((f"identity: {k}", v) for k, v in data["identities"].items())]]
    masks = [[version, m["predicted"], m["accepted"], m["corrected"], m["removed"], m["added"], m["accepted_share"],
              m["mean_iou_of_edits"]] for version, m in report["reviews"]["masks"].items()]
    fields = [[name, f["reviewed"], f["edited"], f["edited_share"]] for name, f in report["captions"]["fields"].items()]
    projects = report["reviews"]["projects"]
    leads = [[review, projects.get(review), t.get("annotations"), t.get("median_s"), t.get("mean_s"), t.get("total_s")]
             for review, t in report["reviews"]["lead_times"].items()]
    checkpoints = [[d["character"], Path(e["out_dir"]).name, c["checkpoint"], c["rank"], c["status"], c["score"],
                    c["checkpoint"] == e["recommended"], c["checkpoint"] == e["human_pick"]]
                   for d in report["datasets"] for e in d["evaluations"] for c in e["ranking"]]
    return {
        "funnel": (["scope", "step", "count"], funnel),
        "mask_review": (["model version", "pre-annotated", "accepted unchanged", "edited", "deleted", "added",
                         "accepted share", "mean IoU of edits"], masks),
        "caption_fields": (["field", "reviewed", "taken out", "share"], fields),
        "lead_times": (["review", "project", "annotations", "median s", "mean s", "total s"], leads),
        "checkpoints": (["character", "evaluation", "checkpoint", "rank", "status", "score", "recommended",
                         "reviewers' pick"], checkpoints),
    }


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    if not rows:
        return ["(none)", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    t = tables(report)
    lines = [f"# castlab run report: `{report['run']}`", ""]
    if report.get("profile") == "tiny":
        lines += ["**tiny profile: random weights, every number below is a test of the plumbing**", ""]
    lines += ["## Stages", "", *_md_table(["stage", "finished", "models"],
                                           [[s["stage"], s["finished"], s["models"]] for s in report["stages"]])]
    lines += ["## Funnel", "", *_md_table(*_pivot(t["funnel"]))]
    clusters = report["identity"]["clusters"].get("counts") or {}
    review = report["identity"]["review"]
    lines += ["## Identities", "", f"clusters {clusters.get('clusters', 0)}, noise share "
              f"{report['identity']['clusters'].get('noise_share')}, clusters named {review['clusters_named']}, "
              f"merges {len(review['merges'])}, splits {len(review['splits'])}, named from noise "
              f"{review['named_from_noise']}", ""]
    captions = report["captions"]["report"]
    lines += ["## Captions", "", f"records {captions.get('records', 0)}, flagged {captions.get('flagged', 0)}, "
              f"edited share {(captions.get('review') or {}).get('edited_share')}", "",
              *_md_table(*t["caption_fields"])]
    lines += ["## Training and evaluation", "", *_md_table(*t["checkpoints"])]
    lines += ["## Review analytics", "", *_md_table(*t["mask_review"]), *_md_table(*t["lead_times"])]
    return "\n".join(lines) + "\n"


def _pivot(table: tuple[list[str], list[list[Any]]]) -> tuple[list[str], list[list[Any]]]:
    """The funnel with one column per scope (all first, then each video) and one row per step."""
    _, rows = table
    scopes = ["all", *dict.fromkeys(r[0] for r in rows if r[0] != "all")]
    counts = {(r[0], r[1]): r[2] for r in rows}
    steps = list(dict.fromkeys(r[1] for r in rows))
    return ["step", *scopes], [[step, *(counts.get((scope, step), 0) for scope in scopes)] for step in steps]


def _img(path: str | None, alt: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p class=none>(none)</p>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(counts: dict[str, int]) -> str:
    """The funnel as bars (CSS widths: no script needed)."""
    top = max([c for c in counts.values() if isinstance(c, int | float)] or [1]) or 1
    rows = "".join(f'<div class=bar><span class=label>{html.escape(k)}</span><span class=fill style="width:'
                   f'{max(0.5, 100 * v / top):.1f}%"></span><span class=count>{v}</span></div>'
                   for k, v in counts.items())
    return f"<div class=bars>{rows}</div>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.tiny{background:#fff3cd;padding:.5em;border:1px solid #e0c000}
.bars{max-width:50em}.bar{display:flex;align-items:center;margin:2px 0}.label{flex:0 0 14em}
.fill{background:#4a7fb5;height:1em;display:inline-block}.count{margin-left:.5em}img{max-width:100%}
figure{margin:.5em 0}figcaption{color:#666;font-size:.9em}"""


def page(report: dict[str, Any]) -> str:
    """The whole report as one HTML page, pictures embedded (opens anywhere, also offline)."""
    t = tables(report)
    esc = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>castlab report {esc(report['run'])}"
             f"</title><style>{CSS}</style></head><body><h1>castlab run report: {esc(report['run'])}</h1>"]
    if report.get("profile") == "tiny":
        parts.append("<p class=tiny>tiny profile: random weights, every number below is a test of the plumbing</p>")
    parts.append(_html_table(["stage", "finished", "models"],
                             [[s["stage"], s["finished"], s["models"]] for s in report["stages"]]))
    funnel = report["funnel"]["all"]
    sheet = _img(report["contact_sheet"], "kept frames and every rejection reason")
    parts.append(f"<section id=funnel><h2>{TITLES['funnel']}</h2>{_bars(funnel['stages'])}"
                 f"{_html_table(*_pivot(t['funnel']))}{sheet}</section>")
    identity = report["identity"]
    parts.append(f"<section id=identity><h2>{TITLES['identity']}</h2>"
                 + _html_table(["clusters", "noise share", "clusters named", "merges", "splits", "named from noise"],
                               [[(identity["clusters"].get("counts") or {}).get("clusters"),
                                 identity["clusters"].get("noise_share"), identity["review"]["clusters_named"],
                                 len(identity["review"]["merges"]), len(identity["review"]["splits"]),
                                 identity["review"]["named_from_noise"]]])
                 + _html_table(["character", "views"], [[n, ", ".join(f"{k} {v}" for k, v in views.items())]
                                                        for n, views in identity["review"]["views"].items()])
                 + _img(identity["scatter"], "identity embeddings (UMAP)") + "</section>")
    captions = report["captions"]
    flags = (captions["report"].get("flags") or {}).items()
    parts.append(f"<section id=captions><h2>{TITLES['captions']}</h2>"
                 + _html_table(["flag", "captions"], list(flags))
                 + _html_table(*t["caption_fields"]) + _img(captions["tokens_chart"], "caption lengths (CLIP tokens)")
                 + "</section>")
    training = "".join(_img(run["loss_curve"], f"{d['character']}: {run['name']} loss") for d in report["datasets"]
                       for run in d["training"])
    comparisons = "".join(_img(e["comparison"], f"{d['character']}: checkpoints compared") for d in report["datasets"]
                          for e in d["evaluations"])
    parts.append(f"<section id=training><h2>{TITLES['training']}</h2>{_html_table(*t['checkpoints'])}{training}"
                 f"{comparisons}</section>")
    note = "" if report["reviews"]["label_studio"] else "<p>Label Studio was not asked: no lead times.</p>"
    parts.append(f"<section id=reviews><h2>{TITLES['reviews']}</h2>{_html_table(*t['mask_review'])}"
                 f"{_html_table(*t['lead_times'])}{note}</section></body></html>")
    return "".join(parts)


def write(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write the page, the Markdown and the CSV tables into `out_dir`; their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"html": write_text_atomic(out_dir / "report.html", page(report)),
             "markdown": write_text_atomic(out_dir / "report.md", markdown(report))}
    for name, (header, rows) in tables(report).items():
        files[name] = write_text_atomic(out_dir / f"{name}.csv", _csv(header, rows))
    return {k: str(v) for k, v in files.items()}

"""Turns the suite's raw result lines into one markdown table and a JSON summary.

Usage: ``python report.py RESULTS_DIR`` where RESULTS_DIR holds what ``run.sh`` wrote:
``runs.jsonl`` (one ``run_one.py`` line per run), ``scaling.jsonl`` (this package with more
workers), ``latency.jsonl`` (``latency.py`` lines), ``kafka.txt`` (optional) and ``meta.json``.
Prints the report and writes ``report.md`` and ``summary.json`` into RESULTS_DIR. Needs only
the standard library.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

OURS = "laminardb"
PEERS = ["upstream", "pathway", "bytewax", "duckdb"]
LABELS = {
    "laminardb": "laminardb (this)",
    "upstream": "laminardb 0.17.0",
    "pathway": "Pathway",
    "bytewax": "Bytewax",
    "duckdb": "DuckDB (batch)",
}
WORKLOAD_LABELS = {
    "w1": "W1 GROUP BY 100 keys",
    "filter_project": "filter + project",
    "groupby_1m": "GROUP BY 1M keys",
    "join": "join, upserts",
    "window": "tumbling window",
    "q0": "Nexmark q0",
    "q1": "Nexmark q1",
    "q2": "Nexmark q2",
    "q3": "Nexmark q3",
    "q4": "Nexmark q4",
    "q5": "Nexmark q5",
    "q7": "Nexmark q7",
    "q8": "Nexmark q8",
}
# Targets: (workload or "*", peer, minimum ratio ours / peer).
TARGETS = [
    ("w1", "upstream", 5.0),
    ("w1", "duckdb", 1 / 1.5),
    ("join", "upstream", 3.0),
    ("window", "upstream", 3.0),
    ("*", "pathway", 3.0),
    ("*", "bytewax", 10.0),
]
P99_TARGET_MS = 10.0


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _rate(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


class Footnotes:
    """Numbered footnotes, one per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def summarize(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (workload, engine): median rows/s of the correct runs, peak RSS, and any failure."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in runs:
        c = cells.setdefault(
            (r["workload"], r["engine"]),
            {"n": r["n"], "rows": r.get("rows"), "rates": [], "rss": [], "errors": [], "notes": set()},
        )
        if r.get("peak_rss_mb") is not None:
            c["rss"].append(r["peak_rss_mb"])
        if r.get("note"):
            c["notes"].add(r["note"])
        if r["ok"]:
            c["rates"].append(r["rows_per_s"])
        else:
            c["errors"].append(r["error"] or "failed")
    for c in cells.values():
        c["runs"] = len(c["rates"]) + len(c["errors"])
        c["median"] = statistics.median(c["rates"]) if c["rates"] and not c["errors"] else None
        c["peak_rss_mb"] = max(c["rss"]) if c["rss"] else None
        c["notes"] = sorted(c["notes"])
    return cells


def _status(c: dict[str, Any] | None) -> str:
    if c is None:
        return "not run"
    if not c["errors"]:
        return "ok"
    kinds = {e.split(":", 1)[0] for e in c["errors"]}
    return "WRONG" if "WRONG" in kinds else ("unsupported" if kinds == {"unsupported"} else "failed")


def render(results: Path) -> tuple[str, dict[str, Any]]:
    meta = json.loads((results / "meta.json").read_text()) if (results / "meta.json").exists() else {}
    cells = summarize(_read_jsonl(results / "runs.jsonl"))
    engines = [OURS] + [p for p in PEERS if any(e == p for _, e in cells)]
    workloads = [w for w in WORKLOAD_LABELS if any(wl == w for wl, _ in cells)]
    notes = Footnotes()
    out: list[str] = []
    head = ["workload", "N"] + [LABELS[e] for e in engines] + [f"× {LABELS[p]}" for p in engines[1:]]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    summary: dict[str, Any] = {"meta": meta, "cells": [], "targets": [], "latency": [], "scaling": []}
    for w in workloads:
        row = [WORKLOAD_LABELS[w], f"{cells[(w, OURS)]['n'] if (w, OURS) in cells else ''}"]
        for e in engines:
            c = cells.get((w, e))
            status = _status(c)
            if c is not None:
                summary["cells"].append(
                    {
                        "workload": w,
                        "engine": e,
                        "n": c["n"],
                        "rows": c["rows"],
                        "status": status,
                        "median_rows_per_s": c["median"],
                        "runs_rows_per_s": c["rates"],
                        "peak_rss_mb": c["peak_rss_mb"],
                        "errors": sorted(set(c["errors"])),
                        "notes": c["notes"],
                    }
                )
            if c is None:
                row.append("not run")
                continue
            mark = "".join(notes.mark(n) for n in c["notes"])
            if status == "ok":
                rss = f" · {c['peak_rss_mb']:.0f} MB" if c["peak_rss_mb"] is not None else ""
                row.append(f"{_rate(c['median'])}{rss}{mark}")
            else:
                reasons = sorted(set(c["errors"]))
                row.append(status + "".join(notes.mark(f"{LABELS[e]}, {w}: {r}") for r in reasons) + mark)
        ours = cells.get((w, OURS), {}).get("median")
        for p in engines[1:]:
            peer = cells.get((w, p), {}).get("median")
            row.append(f"{ours / peer:.2f}×" if ours and peer else "–")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append(
        "Cells: median rows/s over the runs · peak RSS of the run's process (input data included). "
        "× columns: this package's rows/s over the peer's (> 1: this package is faster); "
        "a cell with any wrong or failed run shows WRONG/failed instead of a rate."
    )
    if notes.texts:
        out.append("")
        out.extend(f"[{i + 1}] {t}" for i, t in enumerate(notes.texts))

    # Targets.
    lines = []
    for w, p, need in TARGETS:
        for wl in workloads if w == "*" else [w]:
            ours = cells.get((wl, OURS), {}).get("median")
            peer = cells.get((wl, p), {}).get("median")
            if (wl, p) not in cells:
                continue
            ratio = ours / peer if ours and peer else None
            met = ratio is not None and ratio >= need
            summary["targets"].append({"workload": wl, "peer": p, "need": need, "ratio": ratio, "met": met})
            shown = "n/a" if ratio is None else f"{ratio:.2f}×"
            mark = "".join(notes.mark(n) for e in (OURS, p) for n in cells.get((wl, e), {}).get("notes", []))
            lines.append(f"| {WORKLOAD_LABELS[wl]} vs {LABELS[p]}{mark} | ≥ {need:.2f}× | {shown} | {'met' if met else 'NOT met'} |")

    latency = _read_jsonl(results / "latency.jsonl")
    for lat in latency:
        summary["latency"].append(lat)
        if lat["engine"] == OURS:
            met = lat.get("p99_ms") is not None and lat["p99_ms"] <= P99_TARGET_MS and not lat.get("error")
            p99 = lat.get("p99_ms")
            lines.append(f"| p99 insert→subscriber at {_rate(lat['rate'])} rows/s | ≤ {P99_TARGET_MS:.0f} ms | {p99} ms | {'met' if met else 'NOT met'} |")
    if lines:
        out += ["", "| target | needs | measured | |", "|---|---|---|---|", *lines]

    if latency:
        out += ["", "Insert → subscriber latency (1000-row batches, `subscribe_stream`):", ""]
        out += ["| engine | rows/s | p50 ms | p99 ms | max ms | |", "|---|---|---|---|---|---|"]
        for lat in latency:
            out.append(
                f"| {LABELS.get(lat['engine'], lat['engine'])} | {_rate(lat['rate'])} | {lat.get('p50_ms', '–')} | "
                f"{lat.get('p99_ms', '–')} | {lat.get('max_ms', '–')} | {lat.get('error') or ''} |"
            )

    scaling = _read_jsonl(results / "scaling.jsonl")
    if scaling:
        counts = sorted({r["workers"] for r in scaling})
        base_workers = meta.get("workers", 1)
        out += ["", f"Scaling of this package with timely workers ({base_workers} worker: the table above):", ""]
        out += ["| workload | " + " | ".join(f"{k} worker{'s' if k > 1 else ''}" for k in [base_workers, *counts]) + " | speedup |"]
        out += ["|" + "---|" * (len(counts) + 3)]
        by_workers = {k: {w: c for (w, e), c in summarize([r for r in scaling if r["workers"] == k]).items()} for k in counts}
        for w in workloads:
            base = cells.get((w, OURS))
            row = [WORKLOAD_LABELS[w], _rate(base["median"]) if base and base["median"] else _status(base)]
            last = None
            for k in counts:
                c = by_workers[k].get(w)
                last = c["median"] if c else None
                row.append(_rate(last) if last else _status(c))
                summary["scaling"].append({"workload": w, "workers": k, "median_rows_per_s": last, "status": _status(c)})
            speed = f"{last / base['median']:.2f}×" if last and base and base["median"] else "–"
            out.append("| " + " | ".join(row + [speed]) + " |")

    kafka = results / "kafka.txt"
    if kafka.exists():
        text = kafka.read_text().strip()
        summary["kafka"] = text.splitlines()
        out += ["", "JSON over Kafka → GROUP BY → Kafka (`benches/python/run_kafka.sh`):", "", "```", text, "```"]

    if meta:
        out += [
            "",
            f"Median of {meta.get('runs')} runs interleaved across engines; sizes: scale {meta.get('scale')} "
            f"of the defaults; {meta.get('workers')} worker(s) for the streaming engines; {meta.get('machine', '')}",
        ]
    return "\n".join(out) + "\n", summary


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    results = Path(sys.argv[1])
    text, summary = render(results)
    (results / "report.md").write_text(text)
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    print(text, end="")


if __name__ == "__main__":
    main()

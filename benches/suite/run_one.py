"""Runs one engine on one workload once and prints one JSON line.

Usage: ``python run_one.py ENGINE WORKLOAD N [--workers W]``. Imports ``engine_<ENGINE>``, builds
the workload's inputs (``workloads.build``), calls the adapter's ``run`` and checks its result
against the reference answer. Prints::

    {"engine", "workload", "n", "workers", "rows", "rows_per_s", "seconds", "peak_rss_mb", "ok", "error", "note"}

``ok`` is true only when the result matched. ``error`` is null, ``"unsupported: <reason>"`` when
the engine cannot express the workload, ``"WRONG: <difference>"`` when its result differs from
the reference, or ``"failed: <exception>"``. ``note`` names a documented difference of
semantics the check accounted for (an adapter's ``SEMANTICS[workload]``). Peak RSS is the
largest resident set of this process or any child it waited for (``ru_maxrss``), input data
included.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads  # noqa: E402


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run_one(engine: str, workload: str, n: int, workers: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "engine": engine,
        "workload": workload,
        "n": n,
        "workers": workers,
        "rows": None,
        "rows_per_s": None,
        "seconds": None,
        "peak_rss_mb": None,
        "ok": False,
        "error": None,
        "note": None,
    }
    try:
        adapter = importlib.import_module(f"engine_{engine}")
        inputs = workloads.build(workload, n)
        out["rows"] = inputs.rows
        seconds, result = adapter.run(inputs, workers=workers)
        out["seconds"] = round(seconds, 6)
        out["rows_per_s"] = round(inputs.rows / seconds)
        out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        semantics = getattr(adapter, "SEMANTICS", {}).get(workload)
        if semantics is not None:
            note, want = semantics
            out["note"] = note
            diff = workloads.compare(want(inputs), result)
        else:
            diff = workloads.check(inputs, result)
        if diff is None:
            out["ok"] = True
        else:
            out["error"] = f"WRONG: {diff}"
    except (workloads.Unsupported, NotImplementedError) as e:
        out["error"] = f"unsupported: {e}"
    except Exception as e:  # any other failure is reported in the table, with its traceback on stderr
        traceback.print_exc()
        out["error"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if out["peak_rss_mb"] is None:
        out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine")
    p.add_argument("workload", choices=workloads.WORKLOADS)
    p.add_argument("n", type=int)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(run_one(a.engine, a.workload, a.n, a.workers)), flush=True)


if __name__ == "__main__":
    main()

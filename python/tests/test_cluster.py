"""A pipeline run across 2 and 3 real processes (timely's cluster mode over loopback) gives
exactly the result of the same pipeline in one process: aggregates, joins with updates on both
sides, and event-time windows closed by the cluster's watermark."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import laminardb

NODE = Path(__file__).with_name("cluster_node.py")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def expect(proc: subprocess.Popen[str], what: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"a cluster process exited before '{what}':\n{err}")
    return line.strip()


def run(scenario: str, processes: int, workers: int = 2) -> list[list[dict[str, Any]]]:
    """Runs `scenario` on `processes` processes (1: alone); returns each process's result."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(processes)) if processes > 1 else ""
    procs = [
        subprocess.Popen(
            [sys.executable, str(NODE), scenario, str(i), hosts, str(workers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    try:
        for p in procs:
            assert expect(p, "fed") == "fed"
        results = []
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("collect\n")
            p.stdin.flush()
            results.append(json.loads(expect(p, "collect")))
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            assert expect(p, "stop") == "stopped"
            assert p.wait(timeout=60) == 0
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("scenario", ["aggregate", "join", "window"])
@pytest.mark.parametrize("processes", [2, 3])
def test_a_cluster_gives_the_result_of_one_process(scenario: str, processes: int) -> None:
    [alone] = run(scenario, 1)
    assert len(alone) >= 5, "the scenario produces a real result"
    results = run(scenario, processes)
    assert results[0] == alone, "process 0 sees the whole result"
    for r in results[1:]:
        assert r == [], "the other processes' views are empty (the result is gathered on process 0)"


def test_cluster_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="go together"):
        laminardb.LaminarConfig(processes=["127.0.0.1:1", "127.0.0.1:2"])
    with pytest.raises(ValueError, match="process_index"):
        laminardb.LaminarConfig(processes=["127.0.0.1:1", "127.0.0.1:2"], process_index=2)
    config = laminardb.LaminarConfig(processes=["127.0.0.1:1", "127.0.0.1:2"], process_index=1, workers=1)
    assert config.processes == ["127.0.0.1:1", "127.0.0.1:2"] and config.process_index == 1
    with pytest.raises(laminardb.LaminarError, match="host:port"):
        laminardb.open(":memory:", config=laminardb.LaminarConfig(processes=["a", "b:1"], process_index=0))

"""A pipeline run across 2 and 3 real processes (timely's cluster mode over loopback) gives
exactly the result of the same pipeline in one process: aggregates, joins with updates on both
sides, and event-time windows closed by the cluster's watermark."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
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


def spawn(
    scenario: str, processes: int, workers: int, hosts: str, extra: list[str], sink_dir: Path | None = None
) -> list[subprocess.Popen[str]]:
    env = dict(os.environ)
    if sink_dir is not None:
        env["LAMINAR_SINK_DIR"] = str(sink_dir)
    return [
        subprocess.Popen(
            [sys.executable, str(NODE), scenario, str(i), hosts, str(workers), *extra[i : i + 1], *extra[processes:]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]


def command(procs: list[subprocess.Popen[str]], what: str) -> list[str]:
    """Sends `what` to every process; returns their answers."""
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(what + "\n")
        p.stdin.flush()
    return [expect(p, what) for p in procs]


def finish(procs: list[subprocess.Popen[str]]) -> list[list[dict[str, Any]]]:
    """Waits for every process to be fed, collects each one's result and stops them."""
    for p in procs:
        assert expect(p, "fed") == "fed"
    results = [json.loads(line) for line in command(procs, "collect")]
    assert command(procs, "stop") == ["stopped"] * len(procs)
    for p in procs:
        assert p.wait(timeout=60) == 0
    return results


def kill(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run(scenario: str, processes: int, workers: int = 2) -> list[list[dict[str, Any]]]:
    """Runs `scenario` on `processes` processes (1: alone); returns each process's result."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(processes)) if processes > 1 else ""
    procs = spawn(scenario, processes, workers, hosts, [])
    try:
        return finish(procs)
    finally:
        kill(procs)


def sink_rows(directory: Path) -> list[dict[str, Any]]:
    """Every row of the published files of a JSON file sink, sorted; files of processes apart."""
    rows: list[dict[str, Any]] = []
    for f in sorted(directory.glob("*.jsonl")):
        rows.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def changelog_state(directory: Path) -> tuple[dict[str, int], list[str]]:
    """The rows a JSON changelog file sink's published files leave (row → count), applied file
    by file in epoch order, and the files' names."""
    files = sorted(directory.glob("*.jsonl"), key=lambda f: f.name.split("-")[-2])
    state: dict[str, int] = {}
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                row = json.dumps({k: v for k, v in r.items() if k != "op"}, sort_keys=True)
                state[row] = state.get(row, 0) + (1 if r["op"] == "insert" else -1)
    return {k: v for k, v in state.items() if v}, [f.name for f in files]


def run_sink(processes: int, root: Path, crash: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The `sink` scenario on `processes` processes (with a crash and restart from the
    checkpoint, or not): the rows its files hold, and the files' names. Its updating sink, the
    changelog of counts per bucket, must leave the counts of every row, written by process 0."""
    out = root / "out"
    (out / "buckets").mkdir(parents=True)
    if crash:
        run_with_crash("sink", processes, root, sink_dir=out)
    else:
        hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(processes)) if processes > 1 else ""
        dirs = [str(root / f"p{i}") for i in range(processes)]
        procs = spawn("sink", processes, 2, hosts, [*dirs, "all"], sink_dir=out)
        try:
            finish(procs)
        finally:
            kill(procs)
    rows = sink_rows(out)
    buckets, files = changelog_state(out / "buckets")
    # The final count of every bucket, once: every generated row counted, not only those the
    # other sink's filter keeps.
    assert sum(json.loads(k)["n"] for k in buckets) == 6000 and set(buckets.values()) == {1}, buckets
    prefix = "buckets-p0-" if processes > 1 else "buckets-0"
    assert files and all(f.startswith(prefix) for f in files), files
    return rows, sorted(f.name for f in out.glob("*.jsonl"))


def run_with_crash(
    scenario: str, processes: int, root: Path, workers: int = 2, sink_dir: Path | None = None
) -> list[list[dict[str, Any]]]:
    """Runs `scenario` on `processes` processes, each with its own directory: the first half of
    the rows, a checkpoint, more rows, then every process is killed; the cluster restarts from
    the checkpoint and is fed the second half. Returns each process's result."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(processes))
    dirs = [str(root / f"p{i}") for i in range(processes)]
    procs = spawn(scenario, processes, workers, hosts, [*dirs, "first"], sink_dir)
    try:
        for p in procs:
            assert expect(p, "fed") == "fed"
        epochs = command(procs, "checkpoint")
        assert int(epochs[0]) > 0
        # Rows after the checkpoint are lost with the processes.
        assert command(procs, "lose") == ["fed"] * processes
    finally:
        kill(procs)
    for i in range(1, processes):
        assert any(Path(dirs[i], "checkpoints").glob("ckpt-*")), "every process wrote its part"
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(processes))
    procs = spawn(scenario, processes, workers, hosts, [*dirs, "resume"], sink_dir)
    try:
        return finish(procs)
    finally:
        kill(procs)


@pytest.mark.parametrize("scenario", ["aggregate", "join", "window"])
@pytest.mark.parametrize("processes", [2, 3])
def test_a_cluster_gives_the_result_of_one_process(scenario: str, processes: int) -> None:
    [alone] = run(scenario, 1)
    assert len(alone) >= 5, "the scenario produces a real result"
    results = run(scenario, processes)
    assert results[0] == alone, "process 0 sees the whole result"
    for r in results[1:]:
        assert r == [], "the other processes' views are empty (the result is gathered on process 0)"


@pytest.mark.parametrize("scenario", ["aggregate", "join", "window"])
@pytest.mark.parametrize("processes", [2, 3])
def test_a_cluster_restarts_from_its_checkpoint(scenario: str, processes: int, tmp_path: Path) -> None:
    [alone] = run(scenario, 1)
    results = run_with_crash(scenario, processes, tmp_path)
    assert results[0] == alone, "the restarted cluster's result is exactly that of one uninterrupted process"
    for r in results[1:]:
        assert r == []


@pytest.mark.parametrize("processes", [2, 3])
def test_every_process_writes_its_part_of_a_sink_committed_at_the_clusters_checkpoints(
    processes: int, tmp_path: Path
) -> None:
    alone, alone_files = run_sink(1, tmp_path / "alone", crash=False)
    assert len(alone) > 1500 and all(r["v"] % 3 == 0 and r["w"] == 2 * r["v"] for r in alone)
    assert len({r["k"] for r in alone}) == len(alone), "each generated row once"
    assert all(f.startswith("picked-0") for f in alone_files), alone_files
    rows, files = run_sink(processes, tmp_path / "cluster", crash=False)
    assert rows == alone, "the processes' files together hold the rows of one process, once"
    assert {f.split("-")[1] for f in files} == {f"p{i}" for i in range(processes)}, "every process wrote files"
    # A crash after rows were written but before the checkpoint that would publish them: the
    # restarted cluster writes them again, and no row is published twice or lost.
    rows, _ = run_sink(processes, tmp_path / "crash", crash=True)
    assert rows == alone


@pytest.mark.parametrize(("processes", "victim"), [(2, 1), (2, 0), (3, 1)])
def test_losing_a_process_fails_the_others_at_once(processes: int, victim: int) -> None:
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(processes))
    procs = spawn("aggregate", processes, 1, hosts, [])
    try:
        for p in procs:
            assert expect(p, "fed") == "fed"
        procs[victim].kill()
        procs[victim].wait()
        rest = [p for i, p in enumerate(procs) if i != victim]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and command(rest, "state") != ["Failed"] * len(rest):
            time.sleep(0.1)
        assert command(rest, "state") == ["Failed"] * len(rest), "the pipeline shows that it stopped"
        started = time.monotonic()
        answers = command(rest, "stop")
        assert time.monotonic() - started < 20, "shutting down does not wait for the lost process"
        for a in answers:
            assert a.startswith("error:") and f"lost the connection to process {victim}" in a, a
        for p in rest:
            assert p.wait(timeout=30) == 0
    finally:
        kill(procs)


def test_a_follower_without_the_clusters_checkpoint_fails_to_start(tmp_path: Path) -> None:
    """Process 0 restores a checkpoint that process 1 no longer has: process 1 fails to start,
    naming it, and process 0 fails at once instead of waiting for it."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    dirs = [str(tmp_path / "p0"), str(tmp_path / "p1")]
    procs = spawn("aggregate", 2, 1, hosts, [*dirs, "first"])
    try:
        for p in procs:
            assert expect(p, "fed") == "fed"
        assert int(command(procs, "checkpoint")[0]) > 0
    finally:
        kill(procs)
    shutil.rmtree(tmp_path / "p1" / "checkpoints")
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = spawn("aggregate", 2, 1, hosts, [*dirs, "resume"])
    try:
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert all(p.returncode != 0 for p in procs)
        assert "process 1 cannot restore the cluster's checkpoint of epoch" in errors[1], errors[1][-2000:]
        assert "lost the connection to process 1" in errors[0], errors[0][-2000:]
    finally:
        kill(procs)


def test_a_checkpoint_needs_every_process_to_keep_one(tmp_path: Path) -> None:
    """A follower without a directory refuses its part: process 0's checkpoint fails, naming it,
    and the cluster runs on."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = spawn("aggregate", 2, 1, hosts, [str(tmp_path / "p0"), ":memory:", "first"])
    try:
        for p in procs:
            assert expect(p, "fed") == "fed"
        answer = command(procs, "checkpoint")[0]
        assert answer.startswith("error:") and "process 1" in answer and "keeps no checkpoints" in answer
        assert not any((tmp_path / "p0" / "checkpoints").glob("ckpt-*")), "nothing was written for it"
        totals = json.loads(command(procs, "collect")[0])
        assert sum(r["n"] for r in totals) == 3000, "the first half of the rows, from both processes"
        assert command(procs, "stop") == ["stopped", "stopped"]
    finally:
        kill(procs)


def test_cluster_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="go together"):
        laminardb.LaminarConfig(processes=["127.0.0.1:1", "127.0.0.1:2"])
    with pytest.raises(ValueError, match="process_index"):
        laminardb.LaminarConfig(processes=["127.0.0.1:1", "127.0.0.1:2"], process_index=2)
    config = laminardb.LaminarConfig(processes=["127.0.0.1:1", "127.0.0.1:2"], process_index=1, workers=1)
    assert config.processes == ["127.0.0.1:1", "127.0.0.1:2"] and config.process_index == 1
    with pytest.raises(laminardb.LaminarError, match="host:port"):
        laminardb.open(":memory:", config=laminardb.LaminarConfig(processes=["a", "b:1"], process_index=0))

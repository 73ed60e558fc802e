"""The benchmark script runs: the CPU peers of pyae's whole step and plain's at a tiny size,
with the turn blocks (the timings themselves are benchmarks/RESULTS.md's business, not a
test's)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_step  # noqa: E402


def test_bench_step_whole_step_runs_the_pyae_peers(tmp_path, one_thread, capsys, monkeypatch):
    timed = []
    time_once = bench_step.time_once
    monkeypatch.setattr(bench_step, "time_once", lambda step, device: timed.append(step) or time_once(step, device))
    peers = ["plain", "pyae", "pyae_all", "pyae_fused", "pyae_all_fused", "pyae_plain_fused"]
    out = tmp_path / "rows.json"
    assert bench_step.main(["--device", "cpu", "--whole-step", "--sizes", "4x8x8", "--peers", *peers,
                            "--warmup", "1", "--repeat", "2", "--block", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["block"] == 2
    # Two rounds of a block of two steps per peer: the first step of each block is not timed.
    assert len(timed) == 2 * len(peers)
    rows = result["rows"]
    assert [row["peer"] for row in rows] == peers
    assert all("error" not in row and row["ms"] > 0 for row in rows)
    # The fused peers run no autograd: nothing is counted as saved for a backward.
    assert all(row["saved_bytes"] is None for row in rows if row["peer"].endswith("_fused"))
    assert "| pyae_plain_fused |" in capsys.readouterr().out


def test_bench_step_refuses_a_bad_block(capsys):
    with pytest.raises(SystemExit) as error:
        bench_step.main(["--device", "cpu", "--block", "0"])
    assert error.value.code == 2
    assert "--block must be at least 1" in capsys.readouterr().err

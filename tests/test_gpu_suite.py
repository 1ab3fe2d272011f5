"""benchmarks/gpu_suite.py on the CPU: every part at tiny sizes with JAX and TensorFlow absent, as
on the GPU machine (its --smoke mode), and a missing piece as one line."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import NO_TENSORFLOW

pytestmark = pytest.mark.slow  # each test starts a process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = NO_TENSORFLOW + """
import runpy
sys.argv = ["benchmarks/gpu_suite.py", *sys.argv[1:]]
sys.path.insert(0, "benchmarks")
runpy.run_path("benchmarks/gpu_suite.py", run_name="__main__")
"""


def run_suite(*flags):
    return subprocess.run([sys.executable, "-c", SUITE, *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "KERAS_BACKEND": "jax"})


def test_every_part_runs_at_tiny_sizes_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    result = run_suite("--smoke", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()]
    assert {row["part"] for row in rows} == {"speed", "sampling", "real-data", "quality",
                                             "distribute"}
    assert not [row for row in rows if "skipped" in row]
    speed = [row for row in rows if row["part"] == "speed"]
    assert [(row["preset"], row["precision"]) for row in speed][:2] == [
        ("cifar", "mixed_bfloat16"), ("cifar", "float32")]
    assert all(row["train_img_s"] > 0 and 0 < row["train_mfu"] for row in speed)
    assert {row["calls"] for row in rows if row["part"] == "sampling"} == {2, 3}
    real = [row for row in rows if row["part"] in ("real-data", "distribute")]
    assert [row["distribute"] for row in real] == [False, True]
    assert all(row["step_ms"] > 0 and row["real_over_fixed"] > 0 for row in real)
    quality = [row for row in rows if row["part"] == "quality"]
    assert {row["calls"] for row in quality if row["recipe"] == "default"} == {10, 20}
    assert (tmp_path / "quality_samples.png").stat().st_size > 0
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| speed | ddpm-cifar, float32" in table and "| distribute |" in table


def test_no_gpu_is_one_line_before_any_work(tmp_path):
    jax = pytest.importorskip("jax")
    if jax.devices()[0].platform == "gpu":
        pytest.skip("this machine has a GPU")
    result = run_suite("--data", str(tmp_path / "absent"), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: JAX sees no GPU")
    assert not (tmp_path / "out").exists()

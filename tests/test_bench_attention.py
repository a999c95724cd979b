"""`npvit bench attention` (the paper's Fig. 1) runs end to end and reports what it measured."""
import subprocess
import sys

import numpy as np

from npvit.bench.attention import UNITS, Measurement, Result, run_benchmark


def test_quick_benchmark_writes_table_plot_and_operation_counts(tmp_path):
    png, md = tmp_path / "latency.png", tmp_path / "table.md"
    out = subprocess.run([sys.executable, "-m", "npvit", "bench", "attention", "--quick", "--dim", "32",
                          "--heads", "4", "--proj-len", "16", "--plot", str(png), "--markdown", str(md)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "OPENBLAS_NUM_THREADS=1" in out.stdout          # re-ran itself single-threaded
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    for k in (64, 128, 256):
        assert f"| {k} |" in text
    for unit in UNITS:
        assert f"{unit} (k=64" in text and f"{unit} " in out.stdout
    assert "c_v = sum_N K * c_s" in text and "scores = q k^T" in text


def test_bad_arguments_are_one_line_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "npvit", "bench", "attention", "--dim", "10",
                          "--heads", "4", "--plot", str(tmp_path / "x.png")],
                         capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                         "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                         "VECLIB_MAXIMUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["npvit: error: --dim 10 is not divisible by --heads 4"]


def test_mha_cap_skips_and_says_why():
    result = run_benchmark([8, 16], dim=8, heads=2, proj_len=4, repeats=1, mha_max_k=8, log=lambda s: None)
    assert result.get("MHA", 8).seconds is not None
    skipped = result.get("MHA", 16)
    assert skipped.seconds is None and "--mha-max-k 8" in skipped.note
    assert result.get("separable", 16).counter.macs == 2 * result.get("separable", 8).counter.macs


def test_slope_is_the_log_log_exponent():
    ks = [256, 512, 1024, 2048, 4096]
    result = Result(8, 2, 4, ks, [Measurement("MHA", k, 1e-9 * k ** 2) for k in ks]
                    + [Measurement("separable", k, 3e-7 * k) for k in ks])
    assert np.isclose(result.slope("MHA"), 2.0) and np.isclose(result.slope("separable", 1024), 1.0)
    assert result.slope("Linformer") is None


def test_units_all_runs_the_zoo_single_threaded_and_reports_slopes_and_operation_times(tmp_path):
    png, md = tmp_path / "zoo.png", tmp_path / "zoo.md"
    out = subprocess.run([sys.executable, "-m", "npvit", "bench", "attention", "--units", "all",
                          "--quick", "--dim", "32", "--heads", "2", "--proj-len", "16",
                          "--plot", str(png), "--markdown", str(md)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    from npvit.bench.attention_zoo import ALL_UNITS
    for unit in ALL_UNITS:
        assert f"| {unit} |" in text                    # a slope row and an operation-time row
    assert "('openblas', 1)" in text or "pools seen: []" in text
    assert "Load average" in text and "SIMD baseline" in text
    assert "top 5 operations by time at k = 256" in text


def test_units_all_rejects_a_width_cascaded_group_attention_cannot_split(tmp_path):
    single = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "VECLIB_MAXIMUM_THREADS")}
    out = subprocess.run([sys.executable, "-m", "npvit", "bench", "attention", "--units", "all",
                          "--dim", "40", "--heads", "4", "--plot", str(tmp_path / "x.png")],
                         capture_output=True, text=True, env={**single, "PATH": ""})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "npvit: error: --dim 40 / --heads 4 must be a multiple of 16 (cascaded group attention's key_dim)"]

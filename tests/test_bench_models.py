"""`npvit bench models --quick` runs end to end (so the speed benchmark never rots), with and
without torch, and what it reports is consistent: every model and batch, ratios where torch
is present, multiply-adds equal to torch's own count, notes in the Markdown kept on rewrite.
No timing is asserted."""
import importlib.util
import json
import subprocess
import sys

from no_torch import blocked_imports, run_without_torch
from npvit.commands.bench import _models_benchmark

HAVE_TORCH = all(importlib.util.find_spec(name) is not None for name in ("torch", "timm"))
HAVE_ORT = HAVE_TORCH and all(importlib.util.find_spec(n) is not None for n in ("onnx", "onnxruntime"))


def test_quick_benchmark_reports_both_models_and_frameworks(tmp_path):
    js, md = tmp_path / "bench.json", tmp_path / "bench.md"
    out = subprocess.run([sys.executable, "-m", "npvit", "bench", "models", "--quick", "--json", str(js),
                          "--markdown", str(md)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "OPENBLAS_NUM_THREADS=1" in out.stdout             # re-ran itself single-threaded
    result = json.loads(js.read_text())
    assert result["machine"]["threads"]["OPENBLAS_NUM_THREADS"] == "1"
    assert {(r["model"], r["batch"]) for r in result["inference"]} == {
        (m, b) for m in ("mobilevit_xxs", "mobilevitv2_050") for b in (1, 2)}
    assert [r["model"] for r in result["training"]] == ["mobilevit_xxs", "mobilevitv2_050"]
    for row in result["inference"] + result["training"]:
        assert row["npvit_s"] > 0 and row["npvit_gflops"] > 0
        assert ("ratio" in row) == HAVE_TORCH
    for name, info in result["models"].items():
        parts = info["conv_linear_macs_per_image"] + info["attention_product_macs_per_image"]
        assert info["macs_per_image"] == parts
        assert (info["attention_product_macs_per_image"] > 0) == name.startswith("mobilevit_")  # v1 MHA
        if HAVE_TORCH:
            assert info["torch_macs_per_image"] == info["conv_linear_macs_per_image"]
            assert info["max_abs_logit_difference"] < 1e-4            # the same weights really ran
    for row in result["memory"]:
        assert row["npvit_tracemalloc_bytes"] > 0 and row["npvit_peak_rss_bytes"] is not None
        assert (row.get("torch_peak_rss_bytes") is not None) == HAVE_TORCH
    assert result["profile"]["rows"]
    for row in result["inference"]:                # ONNX Runtime beside torch when installed
        assert ("ort_ratio" in row) == HAVE_ORT
    if HAVE_ORT:
        for info in result["models"].values():
            assert info["max_abs_logit_difference_onnxruntime"] < 1e-4   # the same weights ran
    frameworks = {"npvit"} | ({"torch"} if HAVE_TORCH else set()) | ({"onnxruntime"} if HAVE_ORT else set())
    for name in ("mobilevit_xxs", "mobilevitv2_050"):   # thread rows: 1 thread and every CPU
        rows = [t for t in result["threads"] if t["model"] == name]
        assert {t["framework"] for t in rows} == frameworks and {t["threads"] for t in rows} >= {1}
        assert all(t["s"] > 0 and t["batch"] == 2 for t in rows)
    limits = result["limits"]
    assert limits["copy_gb_per_s"] > 0 and limits["copy_dram_gb_per_s"] > 0 and limits["sgemm_gflop_per_s"] > 0
    for name, profile in result["op_classes"].items():   # every op class against its limit
        classes = {r["class"]: r for r in profile["rows"]}
        assert {"dense conv (GEMM)", "depthwise conv", "SiLU", "norm", "other"} <= set(classes)
        for r in classes.values():
            if r["class"] != "other":
                assert r["calls"] > 0 and r["gb_per_s"] > 0 and r["over_bound"] > 0
        assert classes["dense conv (GEMM)"]["gflop_per_s"] > 0 and classes["SiLU"]["gflop_per_s"] is None
        assert abs(sum(r["ms"] for r in profile["rows"]) - profile["total_s"] * 1e3) < 1e-6
    text = md.read_text()
    for heading in ("## Inference", "### Thread scaling", "## Training step", "## Peak memory",
                    "## Each op class against its own limit", "## Where npvit"):
        assert heading in text


def test_benchmark_without_torch_measures_npvit_alone(tmp_path):
    js = tmp_path / "bench.json"
    out = run_without_torch(["-m", "npvit", "bench", "models", "--quick", "--models", "mobilevitv2_050",
                             "--batches", "1", "--json", str(js)], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(js.read_text())
    assert "torch" not in result["machine"]
    assert all("torch_s" not in r for r in result["inference"] + result["training"])
    assert "torch not installed" in out.stdout
    assert blocked_imports(tmp_path) and set(blocked_imports(tmp_path)) <= {"torch", "timm"}


def test_markdown_rewrite_keeps_hand_written_notes(tmp_path):
    bench = _models_benchmark()
    path = tmp_path / "benchmark.md"
    bench.write_markdown(path, "# first table\n")
    path.write_text(path.read_text() + "\n## Notes\nprofile before the changes\n")
    bench.write_markdown(path, "# second table\n")
    text = path.read_text()
    assert text.startswith("# second table\n") and "first table" not in text
    assert text.endswith("## Notes\nprofile before the changes\n")

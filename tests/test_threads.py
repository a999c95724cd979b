"""How npvit's commands use threads (npvit/threads.py): --threads parsing and its default (every
CPU, BLAS on one thread), eval's images/s line, and finetune giving the same run on one thread
or two. (Inference on two threads equals one thread: tests/test_fast_paths.py.)"""
import json
import time

import numpy as np
import pytest

import npvit
from npvit.cli import main
from npvit.threads import cpu_count


def blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.mark.parametrize("command", ["predict", "eval", "finetune"])
def test_a_negative_thread_count_is_one_line(command, tmp_path, capsys):
    target = {"predict": [], "eval": [str(tmp_path)],
              "finetune": [str(tmp_path), "--model", "mobilevitv2_050"]}[command]
    assert main([command, *target, "--threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "npvit: error: --threads must be 0 (every CPU) or a positive number, got -1"


def test_a_thread_count_that_is_no_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "somewhere", "--threads", "two"])
    assert stop.value.code == 2 and "--threads: invalid int value: 'two'" in capsys.readouterr().err


def test_eval_by_default_uses_every_cpu_with_blas_on_one_thread(imagenet_folder, capsys):
    pytest.importorskip("threadpoolctl")
    folder, weights = imagenet_folder
    assert main(["eval", str(folder), "--weights", str(weights), "--size", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threads"] == npvit.get_num_threads() == cpu_count()
    assert blas_threads() == {1}


def test_eval_reports_images_per_second_on_its_threads(imagenet_folder, capsys):
    folder, weights = imagenet_folder
    started = time.perf_counter()
    assert main(["eval", str(folder), "--weights", str(weights), "--size", "32", "--json",
                 "--threads", "2"]) == 0
    whole_command = time.perf_counter() - started
    result = json.loads(capsys.readouterr().out)
    assert result["threads"] == 2
    # timed after the model is loaded, so the 6 images took less than the whole command
    assert result["images"] / result["images_per_second"] < whole_command
    assert main(["eval", str(folder), "--weights", str(weights), "--size", "32",
                 "--threads", "1"]) == 0
    speed = [line.split() for line in capsys.readouterr().out.splitlines()
             if line.split()[:1] == ["speed"]]
    assert len(speed) == 1 and speed[0][2:6] == ["images/s", "on", "1", "thread(s)"]
    assert float(speed[0][1]) > 0


def test_finetune_on_two_threads_trains_what_one_thread_trains(tmp_path):
    """Validation runs its images in the pool; the training step stays on one BLAS thread:
    the weights and the log are the same, bit for bit."""
    from test_cli_finetune import QUICK, write_stripes
    from npvit.weights import read_checkpoint
    folder = write_stripes(tmp_path / "data", (2, 2))
    runs = []
    for threads in ("1", "2"):
        out = tmp_path / f"run{threads}"
        assert main(["finetune", str(folder), "--model", "mobilevitv2_050", "--epochs", "1",
                     "--out", str(out), "--threads", threads, *QUICK]) == 0
        assert npvit.get_num_threads() == int(threads)
        log = json.loads((out / "run.json").read_text())["epochs"]
        runs.append((read_checkpoint(out / "model.npz"),
                     [(e["train_loss"], e["val_loss"], e["val_acc"]) for e in log]))
    (state1, log1), (state2, log2) = runs
    assert log1 == log2 and state1.keys() == state2.keys()
    assert all(np.array_equal(state1[k], state2[k]) for k in state1)


def test_a_pool_lowers_the_switch_interval_and_one_thread_restores_it():
    import sys
    from npvit.threads import POOL_SWITCH_INTERVAL
    before = sys.getswitchinterval()
    assert POOL_SWITCH_INTERVAL < before        # Python's default is 5 ms
    for _ in range(2):                          # set twice: the original is still remembered
        npvit.set_num_threads(2)
        assert sys.getswitchinterval() == pytest.approx(POOL_SWITCH_INTERVAL)
    npvit.set_num_threads(1)
    assert sys.getswitchinterval() == before


@pytest.mark.parametrize("command", ["predict", "eval", "finetune"])
def test_the_size_check_still_refuses_a_size_that_cannot_fit_on_two_threads(command, tmp_path,
                                                                              capsys):
    """--threads is applied first (the size check runs the model), and the check still runs."""
    target = {"predict": ["--model", "mobilevit_xxs"], "eval": [str(tmp_path), "--model",
              "mobilevit_xxs"], "finetune": [str(tmp_path), "--model", "mobilevit_xxs",
                                             "--out", str(tmp_path / "out")]}[command]
    assert main([command, *target, "--size", "100000", "--threads", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("npvit: error: --size 100000 is too large for mobilevit_xxs: ")
    assert "the largest --size that fits is" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_without_threadpoolctl_the_default_is_one_thread_and_no_warning(imagenet_folder, capsys,
                                                                        monkeypatch):
    """BLAS cannot be pinned then, so a pool on top of its threads would oversubscribe."""
    import warnings
    from npvit import threads
    monkeypatch.setattr(threads, "can_pin_blas", lambda: False)
    folder, weights = imagenet_folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["eval", str(folder), "--weights", str(weights), "--size", "32",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == 1

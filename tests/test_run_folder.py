"""Run-folder safety of ``npvit finetune`` (npvit.train.run_folder): a new run never destroys or
mixes with an earlier one, a run killed with SIGKILL at any of its writes leaves only whole files
of one run (and the next run cleans up and continues), a run whose loss becomes non-finite stops
without touching the last checkpoint, and damaged checkpoints and bad hyper-parameters are
refused in one line.

The kills are real: the test forks, the child runs the command with ``os.replace`` wrapped so it
sends itself SIGKILL just before (or after) the k-th rename into the run folder, and the parent
inspects what is left. Forking reuses the imported modules, so each kill costs about a second.
"""
import json
import os
import signal
import zipfile

import numpy as np
import pytest
from PIL import Image

from npvit import cli
from npvit.train import run_folder, trainer

from test_cli_finetune import QUICK, _one_line_error, write_stripes

RUN_FILES = ("checkpoint.npz", "curves.png", "model.npz", "run.json")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_stripes(tmp_path_factory.mktemp("stripes"), (4, 2))


def finetune(folder, out, *extra):
    return ["finetune", str(folder), "--model", "mobilevitv2_050", "--epochs", "1",
            "--out", str(out), *QUICK, *extra]


def snapshot(out):
    """{name: bytes} of every file in the folder."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def check_whole(out):
    """Every run file present is complete and readable."""
    for name in RUN_FILES:
        path = out / name
        if not path.exists():
            continue
        if name.endswith(".npz"):
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None, name
        elif name == "run.json":
            json.loads(path.read_text())
        else:
            Image.open(path).verify()


def run_killed(argv, kill_before: int | None = None, kill_after: int | None = None,
               out=None) -> int:
    """Run ``npvit argv`` in a forked child that SIGKILLs itself just before (or after) its
    k-th os.replace into ``out``; return the signal that ended it (or -exit code)."""
    pid = os.fork()
    if pid == 0:   # child
        try:
            real, count = os.replace, [0]

            def replace(src, dst, *a, **kw):
                inside = os.path.dirname(os.path.abspath(dst)) == os.path.abspath(out)
                count[0] += inside
                if inside and count[0] == kill_before:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(src, dst, *a, **kw)
                if inside and count[0] == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)

            os.replace = replace
            code = cli.main(argv)
        finally:
            os._exit(locals().get("code", 99))
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def test_a_second_run_is_refused_and_overwrite_replaces_the_whole_run(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(finetune(folder, out)) == 0
    first = snapshot(out)
    assert sorted(first) == sorted(RUN_FILES)
    err = _one_line_error(capsys, finetune(folder, out, "--seed", "1"))
    assert "already holds a run" in err and "--overwrite" in err
    assert snapshot(out) == first                        # nothing touched
    assert cli.main(finetune(folder, out, "--seed", "1", "--overwrite")) == 0
    second = snapshot(out)
    assert sorted(second) == sorted(RUN_FILES)
    assert all(second[n] != first[n] for n in RUN_FILES)
    assert json.loads(second["run.json"])["settings"]["seed"] == 1


@pytest.mark.parametrize("kill_before", [None, 1, 2, 3, 4])
def test_a_run_killed_at_any_write_leaves_one_runs_whole_files(folder, tmp_path, kill_before):
    """Run A is in the folder; run B (--overwrite, another seed) is killed before its first
    file is renamed into place (None: when the epoch's writing starts, before any temporary
    file), or before the 2nd, 3rd or 4th (the manifest). What is left is A, whole, or a subset
    of B's files, whole; never both. The next run removes the stale temporary files; --resume
    continues from B's checkpoint when it exists."""
    out = tmp_path / "run"
    assert cli.main(finetune(folder, out)) == 0
    a = snapshot(out)
    argv = finetune(folder, out, "--seed", "1", "--overwrite")
    if kill_before is None:
        from npvit.commands import finetune as command
        real = command.write_epoch
        command.write_epoch = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        try:
            assert run_killed(argv, out=out) == signal.SIGKILL
        finally:
            command.write_epoch = real
        assert snapshot(out) == a                        # B wrote nothing: A is intact
        return
    assert run_killed(argv, kill_before=kill_before, out=out) == signal.SIGKILL
    left = snapshot(out)
    stale = [n for n in left if n.startswith(".")]
    assert stale, "the killed write should have left its temporary file"
    run_files = {n: b for n, b in left.items() if not n.startswith(".")}
    check_whole(out)
    assert len(run_files) == kill_before - 1              # B's files renamed so far, A's gone
    assert not any(a[n] == b for n, b in run_files.items())
    # the next run cleans up: --resume when B's checkpoint is there (its one epoch is done:
    # it completes the other files), else B again
    if "checkpoint.npz" in run_files:
        argv = ["finetune", str(folder), "--resume", str(out / "checkpoint.npz"), "--quiet"]
    assert cli.main(argv) == 0
    assert sorted(os.listdir(out)) == sorted(RUN_FILES)
    check_whole(out)
    assert json.loads((out / "run.json").read_text())["settings"]["seed"] == 1


def test_resume_after_a_kill_between_checkpoint_and_manifest(folder, tmp_path):
    """Killed after epoch 1's checkpoint is in place but before the rest of epoch 1's files:
    --resume trains epoch 2 and leaves a whole, consistent run of 2 epochs."""
    out = tmp_path / "run"
    argv = finetune(folder, out)[:-len(QUICK)] + QUICK
    argv[argv.index("--epochs") + 1] = "2"
    assert run_killed(argv, kill_after=1, out=out) == signal.SIGKILL
    assert sorted(os.listdir(out)) == ["checkpoint.npz"]
    assert cli.main(["finetune", str(folder), "--resume", str(out / "checkpoint.npz"),
                     "--quiet"]) == 0
    log = json.loads((out / "run.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1, 2] and log["epochs_done"] == 2
    check_whole(out)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(folder, tmp_path,
                                                                       capsys, monkeypatch):
    out = tmp_path / "run"
    argv = finetune(folder, out)
    argv[argv.index("--epochs") + 1] = "2"
    real, train_steps = trainer.cross_entropy_forward, [0]
    steps_per_epoch = 3                                   # 12 training images, batches of 4

    def nan_in_epoch_2(logits, y, label_smoothing=0.0):
        loss, cache = real(logits, y, label_smoothing)
        if label_smoothing:                               # train_step's call, once a step
            train_steps[0] += 1
            if train_steps[0] > steps_per_epoch:
                loss = float("nan")
        return loss, cache

    monkeypatch.setattr(trainer, "cross_entropy_forward", nan_in_epoch_2)
    err = _one_line_error(capsys, argv + ["--label-smoothing", "0.1"])
    assert "epoch 2/2" in err and "loss became nan" in err and "keeps epoch 1" in err, err
    log = json.loads((out / "run.json").read_text())
    assert log["epochs_done"] == 1
    with np.load(out / "checkpoint.npz") as ckpt:
        assert int(ckpt["meta/epoch"]) == 1
        assert all(np.isfinite(ckpt[k]).all() for k in ckpt.files if ckpt[k].dtype.kind == "f")


def test_damaged_checkpoints_are_refused_in_one_line(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(finetune(folder, out)) == 0
    good = (out / "checkpoint.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[:len(good) // 2])
    crc = tmp_path / "crc.npz"
    damaged = bytearray(good)
    with zipfile.ZipFile(out / "checkpoint.npz") as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    local = info.header_offset          # local header: 30 bytes, name, extra, then the data
    name_len, extra_len = (int(n) for n in np.frombuffer(good[local + 26:local + 30], "<u2"))
    damaged[local + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    crc.write_bytes(bytes(damaged))
    keyless = tmp_path / "keyless.npz"
    np.savez(keyless)
    weights_only = tmp_path / "weights.npz"
    with np.load(out / "model.npz") as m:
        np.savez(weights_only, **{k: m[k] for k in m.files if k != "npvit_meta"})
    (tmp_path / "dir.npz").mkdir()
    for path, words in ((truncated, "not a readable"), (crc, "not a readable"),
                        (keyless, "not an npvit training checkpoint"),
                        (weights_only, "not an npvit training checkpoint"),
                        (tmp_path / "dir.npz", "not a regular file")):
        err = _one_line_error(capsys, ["finetune", str(folder), "--resume", str(path)])
        assert words in err and str(path) in err, err


@pytest.mark.parametrize("flags, words", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "0"], "--lr"),
    (["--lr", "1e300"], "--lr"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--weight-decay", "inf"], "--weight-decay"), (["--weight-decay", "-1"], "--weight-decay"),
    (["--seed", "-1"], "--seed"), (["--label-smoothing", "1"], "--label-smoothing"),
    (["--crop-scale", "0", "1"], "--crop-scale"), (["--crop-scale", "0.9", "0.5"], "--crop-scale"),
    (["--epochs", "0"], "--epochs"), (["--size", "100000"], "--size 100000 is too large"),
    (["--recipe", "cifar"], "invalid choice")])
def test_bad_hyper_parameters_are_refused_up_front(folder, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    argv = finetune(folder, out, *flags)
    if words == "invalid choice":          # argparse's own refusal: usage + one error line
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert words in capsys.readouterr().err
    else:
        assert words in _one_line_error(capsys, argv)
    assert not out.exists()                # refused before anything was created


def test_out_that_is_a_file_or_inside_one_is_refused(folder, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    assert "is a file, not a folder" in _one_line_error(capsys, finetune(folder, a_file))
    assert "cannot create the output folder" in _one_line_error(
        capsys, finetune(folder, a_file / "sub"))
    assert a_file.read_text() == "keep me"


def test_a_locked_folder_is_refused_while_another_run_writes(tmp_path):
    out = tmp_path / "run"
    with run_folder.RunFolder(out):
        with pytest.raises(ValueError, match="another npvit finetune is writing"):
            run_folder.RunFolder(out)
    assert not out.exists()          # created for a run that wrote nothing: removed again

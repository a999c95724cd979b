"""The folder of one training run: which files make a run, and how they get there whole.

    checkpoint.npz   model + optimiser + schedule + settings + the epoch log: --resume
    model.npz        the weights with what is needed to use them (model, classes, input size,
                     preprocessing): --weights, predict, eval, scoremap, create_model(pretrained=)
    curves.png       train / held-out loss and accuracy and the learning rate, per epoch
    run.json         the manifest: model, classes, settings, and one record per finished epoch
                     (the training log); written last, so it describes files that are complete

Rules (npvit finetune keeps them; tests/test_run_folder.py kills runs at every write to check):
- One run per folder. A folder that holds any run file is refused unless ``overwrite``, or
  unless the run continues (--resume of the checkpoint in that folder). Refusing, rather than
  switching to a fresh numbered folder, keeps the result where the user said it would be:
  ``finetune --out run`` followed by ``predict --weights run/model.npz`` never silently uses an
  older model from the same path.
- Nothing is written before the first epoch ends, so a run killed earlier leaves the folder as
  it was (an earlier run included, even with ``overwrite``).
- Each file is written to a temporary ``.<name>.<pid>.*.part`` file in the folder and renamed
  into place (npvit.outputs.write_atomically; os.replace is atomic): a file is always either
  the old one or the new one, never a part.
- Overwriting removes every file of the earlier run before the new run's first files appear,
  so the folder never mixes two runs; the earlier run is gone only once the new one has
  finished an epoch.
- One writer at a time: the folder is locked (flock) for the run; a second run into it is
  refused. Temporary files left by killed runs are removed when the next run takes the lock.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import NpvitError
from ..outputs import write_atomically

try:
    import fcntl
except ImportError:      # not on Windows: runs there are not protected from a concurrent writer
    fcntl = None

MANIFEST = "run.json"
RUN_FILES = ("checkpoint.npz", "model.npz", "curves.png", MANIFEST)
LEGACY_FILES = ("classes.txt",)      # written beside the model by npvit before run.json


def _is_temporary(name: str) -> bool:
    # npvit.outputs.write_atomically's .<name>.<pid>.<random>.part, and the .tmp-*.npz that
    # earlier versions of save_checkpoint left
    return name.startswith(".") and (name.endswith(".part") or name.startswith(".tmp-"))


class RunFolder:
    """Take ``path`` for a run (see the rules above). ``continuing``: the folder's run goes on
    (resume), so its files are expected. Use as a context manager; the lock is released on
    exit, and a folder this run created but never wrote to is removed again."""

    def __init__(self, path, overwrite: bool = False, continuing: bool = False):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NpvitError(f"--out {self.path} is a file, not a folder")
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NpvitError(f"cannot create the output folder {self.path}: "
                             f"{e.strerror or e}") from None
        self._lock_fd = self._lock()
        try:
            self._remove_stale_temporaries()
            held = self.run_files()
            if held and not (overwrite or continuing):
                raise NpvitError(
                    f"{self.path} already holds a run ({', '.join(held)}): choose another --out, "
                    f"continue it with --resume {self.path / 'checkpoint.npz'}, or pass "
                    f"--overwrite to replace it")
        except BaseException:
            self.close()
            raise
        self._clear_before_first_write = bool(held) and overwrite and not continuing

    def _lock(self):
        if fcntl is None:
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise NpvitError(f"another npvit finetune is writing to {self.path}") from None
        return fd

    def _remove_stale_temporaries(self) -> None:
        # safe under the lock: no other run is writing here
        for entry in os.scandir(self.path):
            if entry.is_file(follow_symlinks=False) and _is_temporary(entry.name):
                os.unlink(entry.path)

    def run_files(self) -> list[str]:
        """The run files (and legacy ones) present in the folder."""
        return [n for n in RUN_FILES + LEGACY_FILES if (self.path / n).exists()]

    def file(self, name: str) -> Path:
        """The path to write run file ``name`` to (atomically: ``write_atomically`` or a writer
        that renames into place). The first file of a run that overwrites an earlier one first
        removes all of the earlier run's files, manifest first."""
        if self._clear_before_first_write:
            for n in (MANIFEST,) + tuple(n for n in RUN_FILES + LEGACY_FILES if n != MANIFEST):
                (self.path / n).unlink(missing_ok=True)
            self._clear_before_first_write = False
        return self.path / name

    def write(self, name: str, write) -> Path:
        """Write run file ``name`` atomically with ``write(f)`` on an open binary file."""
        path = self.file(name)
        write_atomically(path, write)
        return path

    def write_manifest(self, manifest: dict) -> Path:
        text = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
        return self.write(MANIFEST, lambda f: f.write(text))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)         # releases the flock
            self._lock_fd = None
        if self.created and not any(self.path.iterdir()):
            self.path.rmdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

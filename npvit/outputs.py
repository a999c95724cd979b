"""Writing output files so that nothing is lost and nothing is half-written.

    check_output(path, suffixes=(".png",), overwrite=False)   refuse a bad target up front
    write_atomically(path, lambda f: f.write(data))            temp file beside it, then rename
    save_image(image, path), save_figure(fig, path, dpi)        the same for a Pillow image, a figure

A target is refused, in one NpvitError line, when it is a directory, a FIFO, a device or
anything else that is not a regular file (writing there would block, or turn a pipe into a
file), when its folder is a file, when its ending names a format the writer does not know,
and (``overwrite=False``) when a file is already there.

`write_atomically` writes to ``.<name>.<pid>.<random>.part`` in the target's folder and renames
it over the target only once complete, so a reader (or a kill -9) never sees half a file. A
part file left by a process that was killed is removed the next time the same target is
written; the pid in its name tells a dead writer's file from a running one's. SIGTERM is turned
into an exception by the CLI, so a terminated run removes its own part file.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import NpvitError


def check_output(path, suffixes=None, overwrite: bool = True, what: str = "output",
                 force_option: str = "--force") -> Path:
    """``path`` as a Path, or one NpvitError line saying why it cannot be written."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise NpvitError(f"{what} {path}: unknown file type {path.suffix or '(no ending)'!r}; "
                         f"use one of {', '.join(suffixes)}")
    for folder in _ancestors(path.parent):
        if folder.exists() and not folder.is_dir():
            raise NpvitError(f"cannot write {what} {path}: {folder} is a file, not a folder")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise NpvitError(f"cannot write {what} {path}: {e.strerror or e}") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise NpvitError(f"{what} {path} is a directory; give a file name inside it")
        if not stat.S_ISREG(mode):
            raise NpvitError(f"{what} {path} exists and is not a regular file (a FIFO, device "
                             "or socket); npvit writes only regular files")
        if not overwrite:
            raise NpvitError(f"{what} {path} already exists; pass {force_option} to replace it")
    return path


def _ancestors(folder: Path) -> list[Path]:
    """``folder`` and the folders above it, outermost first."""
    folder = Path(os.path.abspath(folder))
    return [*reversed(folder.parents), folder]


def write_atomically(path, write, mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it to ``path``.
    On any failure (or SIGTERM / Ctrl-C) the temporary file is removed and ``path`` is as it
    was. The folder is created if missing. OSError from the file system becomes one line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part",
                                   dir=path.parent)
    except OSError as e:
        raise NpvitError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())    # mkstemp made it private; give it a new file's mode
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise NpvitError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_parts(path) -> list[Path]:
    """Remove ``.<name>.<pid>.*.part`` files beside ``path`` whose writing process is gone."""
    path = Path(path)
    removed = []
    for part in path.parent.glob(f".{path.name}.*.part"):
        pid = part.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":   # Windows' os.kill(pid, 0) would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True      # someone else's process (or unknown): leave its file alone
    return True


def figure_suffixes() -> tuple[str, ...]:
    """The file endings matplotlib can save a figure as (.png, .pdf, .svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase
    return tuple(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes())


def check_figure_output(path, what: str = "output") -> Path:
    """check_output for a figure: an ending matplotlib knows, a regular file or nothing there."""
    return check_output(path, suffixes=figure_suffixes(), what=what)


def save_figure(fig, path, dpi: int) -> Path:
    """``fig.savefig`` to ``path`` atomically, in the format its ending names."""
    path = check_figure_output(path)
    return write_atomically(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower(), dpi=dpi))


def save_image(image, path, format: str | None = None) -> Path:
    """A Pillow ``image`` to ``path`` atomically, as ``format`` or the format its ending names."""
    from PIL import Image
    path = Path(path)
    format = format or Image.registered_extensions().get(path.suffix.lower())
    if format is None:
        raise NpvitError(f"cannot write {path}: Pillow knows no image format "
                         f"{path.suffix or '(no ending)'!r}")
    return write_atomically(path, lambda f: image.save(f, format=format))

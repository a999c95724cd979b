"""Fetch the official checkpoints into a cache, convert each once to ``.npz``, reuse it.

Cache folder: ``--dir`` / the ``directory`` argument, else ``$NPVIT_HOME``, else
``$XDG_CACHE_HOME/npvit`` (``~/.cache/npvit``). It holds the downloaded file under its official
name (``mobilevit_xxs.pt``, ``mobilevitv2-1.0.pt`` ...) and the converted ``<model>.npz`` that is
loaded from then on. Every file appears under its final name only once complete and verified
(written to a temporary file, then renamed), so an interrupted download leaves nothing behind
that could be mistaken for a checkpoint.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import NpvitError
from ..outputs import check_output, write_atomically
from .convert import convert_checkpoint, save_npz
from .registry import official

TIMEOUT_SECONDS = 60
CHUNK_BYTES = 1 << 20


def cache_dir(directory=None) -> Path:
    if directory is not None:
        return Path(directory)
    if os.environ.get("NPVIT_HOME"):
        return Path(os.environ["NPVIT_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "npvit"


def local_weights(name: str, directory=None) -> Path | None:
    """Model ``name``'s weights already in ``directory`` (default: the cache): the converted
    ``<name>.npz``, else the official checkpoint under its official file name; None when
    neither is there. Never touches the network."""
    folder = cache_dir(directory)
    for path in (folder / f"{name}.npz", folder / official(name).file_name):
        if path.is_file():
            return path
    return None


class DownloadError(NpvitError):
    """The network failed, or what arrived is not the file (size, sha256). Problems of the
    folder it goes into are plain NpvitErrors that say so, not download errors."""


def fetch(url: str, dest, sha256: str | None = None, size: int | None = None,
          progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with a progress bar (stderr), verifying the byte count the
    server announced, and ``size`` / ``sha256`` when given. Written atomically
    (npvit.outputs.write_atomically): on any failure nothing is left at ``dest``, nor a
    temporary file (one left by a killed run is removed). Raises DownloadError for the network
    or a wrong file, NpvitError for a folder that cannot be written."""
    dest = check_output(dest, what="download target")

    def write(out):
        digest, received = hashlib.sha256(), 0
        try:
            response = urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            raise DownloadError(str(getattr(e, "reason", None) or e)) from None
        with response:
            announced = response.headers.get("Content-Length")
            announced = int(announced) if announced and announced.isdigit() else None
            with tqdm(total=announced, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, disable=not progress) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (http.client.HTTPException, OSError) as e:   # the connection, not the disk
                        raise DownloadError(f"the connection failed ({e})") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        # http.client returns a short body without complaint when the server hangs up early
        if announced is not None and received != announced:
            raise DownloadError(f"download of {url} was interrupted after {received} of {announced} bytes")
        if size is not None and received != size:
            raise DownloadError(f"{url} has {received} bytes, expected {size}; the file was discarded")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256.lower()}; "
                                "the file was discarded")

    return write_atomically(dest, write)


def check_cache_folder(folder: Path) -> Path:
    """The cache folder, created if missing; one line when it is a file or cannot be written
    (naming NPVIT_HOME when that is where it comes from), so that is not taken for a network
    problem."""
    origin = " (NPVIT_HOME)" if os.environ.get("NPVIT_HOME") and folder == cache_dir() else ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NpvitError(f"the weights folder {folder}{origin} is a file (or inside one), not a "
                         "folder; point it elsewhere") from None
    except OSError as e:
        raise NpvitError(f"cannot create the weights folder {folder}{origin}: "
                         f"{e.strerror or e}") from None
    if not folder.is_dir():
        raise NpvitError(f"the weights folder {folder}{origin} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise NpvitError(f"the weights folder {folder}{origin} is not writable; point "
                         "NPVIT_HOME (or --dir) at a folder you can write")
    return folder


def download(name: str, directory=None, progress: bool = True, force: bool = False) -> Path:
    """The official checkpoint file of model ``name`` in the cache, downloaded if absent (or,
    with ``force``, again)."""
    entry = official(name)
    dest = check_cache_folder(cache_dir(directory)) / entry.file_name
    if not force and dest.is_file() and _matches(dest, entry):
        return dest
    try:
        return fetch(entry.url, dest, entry.sha256, entry.bytes, progress)
    except DownloadError as e:
        raise NpvitError(
            f"could not download {name} from {entry.url} ({e}). To use it offline, fetch "
            f"that URL by hand (e.g. curl -L -o {entry.file_name} {entry.url}) and pass the file "
            f"with --weights {entry.file_name} or create_model({name!r}, "
            f"pretrained={entry.file_name!r}), or put it at {dest}") from None


def pretrained_path(name: str, directory=None, progress: bool = True, force: bool = False) -> Path:
    """The cached ``<name>.npz``: downloaded and converted the first time (or, with ``force``,
    again), reused after."""
    npz = cache_dir(directory) / f"{name}.npz"
    if force or not npz.is_file():
        source = download(name, directory, progress, force)
        converted = convert_cached(source, name)
        save_npz(converted.state, npz)
    return npz


def convert_cached(path, name: str):
    """convert_checkpoint on a file of the cache; when it is damaged, the one line says how to
    replace it (`npvit download NAME --force`) rather than to fetch what is already there."""
    try:
        return convert_checkpoint(path, model=name)
    except NpvitError as e:
        raise NpvitError(f"{e} — this file in npvit's cache is damaged; run `npvit download "
                         f"{name} --force` to fetch and convert it again") from None


def load_pretrained(name: str, pretrained=True, directory=None) -> dict:
    """The npvit (timm-named) state dict for ``create_model(name, pretrained=...)``:
    ``True`` -> the official weights from the cache; a path -> that checkpoint file, in any
    layout npvit reads, checked against model ``name``."""
    if pretrained is True:
        return convert_cached(pretrained_path(name, directory), name).state
    return convert_checkpoint(pretrained, model=name).state


def _matches(path: Path, entry) -> bool:
    """A cached file is trusted when its size and sha256 match wherever the manifest knows them."""
    if entry.bytes is not None and path.stat().st_size != entry.bytes:
        return False
    if entry.sha256 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest() == entry.sha256.lower()
    return True

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
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import NpvitError
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


def fetch(url: str, dest, sha256: str | None = None, size: int | None = None,
          progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with a progress bar (stderr), verifying the byte count the
    server announced, and ``size`` / ``sha256`` when given. On any failure nothing is left at
    ``dest`` (nor a temporary file); network errors propagate as urllib/OSError exceptions."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            announced = response.headers.get("Content-Length")
            announced = int(announced) if announced is not None else None
            with tqdm(total=announced, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        # http.client returns a short body without complaint when the server hangs up early
        if announced is not None and received != announced:
            raise NpvitError(f"download of {url} was interrupted after {received} of {announced} bytes")
        if size is not None and received != size:
            raise NpvitError(f"{url} has {received} bytes, expected {size}; the file was discarded")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise NpvitError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256.lower()}; "
                             "the file was discarded")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def download(name: str, directory=None, progress: bool = True) -> Path:
    """The official checkpoint file of model ``name`` in the cache, downloaded if absent."""
    entry = official(name)
    dest = cache_dir(directory) / entry.file_name
    if dest.is_file() and _matches(dest, entry):
        return dest
    try:
        return fetch(entry.url, dest, entry.sha256, entry.bytes, progress)
    except (NpvitError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise NpvitError(
            f"could not download {name} from {entry.url} ({reason}). To use it offline, fetch "
            f"that URL by hand (e.g. curl -L -o {entry.file_name} {entry.url}) and pass the file "
            f"with --weights {entry.file_name} or create_model({name!r}, "
            f"pretrained={entry.file_name!r}), or put it at {dest}") from None


def pretrained_path(name: str, directory=None, progress: bool = True) -> Path:
    """The cached ``<name>.npz``: downloaded and converted the first time, reused after."""
    npz = cache_dir(directory) / f"{name}.npz"
    if not npz.is_file():
        converted = convert_checkpoint(download(name, directory, progress), model=name)
        save_npz(converted.state, npz)
    return npz


def load_pretrained(name: str, pretrained=True, directory=None) -> dict:
    """The npvit (timm-named) state dict for ``create_model(name, pretrained=...)``:
    ``True`` -> the official weights from the cache; a path -> that checkpoint file, in any
    layout npvit reads, checked against model ``name``."""
    path = pretrained_path(name, directory) if pretrained is True else pretrained
    return convert_checkpoint(path, model=name).state


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

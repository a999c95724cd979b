"""The real thing: npvit with the OFFICIAL ml-cvnets weights reproduces the logits the Hugging
Face port published for them (npvit/data/anchors.json), through `npvit verify`, without torch.

Needs the official files, which cannot reach the CI machines: set NPVIT_OFFICIAL_WEIGHTS to a
folder holding them under their official names (mobilevit_xxs.pt, mobilevit_xs.pt,
mobilevit_s.pt, mobilevitv2-1.0.pt; `npvit download` names them the same way) and, optionally,
the anchor image 000000039769.jpg (otherwise `npvit verify` takes it from the cache or downloads
it). Without the variable these tests skip, saying why; they are the only tests that may skip
in CI. Run them with  NPVIT_OFFICIAL_WEIGHTS=DIR python -m pytest -m official
"""
import os
from pathlib import Path

import pytest

from npvit.data.anchors import load_anchors
from no_torch import run_without_torch

FOLDER = os.environ.get("NPVIT_OFFICIAL_WEIGHTS")
ANCHORED = list(dict.fromkeys(a.model for a in load_anchors()))

pytestmark = [
    pytest.mark.official,
    pytest.mark.skipif(not FOLDER, reason="NPVIT_OFFICIAL_WEIGHTS is not set: it must name a "
                                          "folder holding the official ml-cvnets checkpoints"),
]


@pytest.mark.parametrize("model", ANCHORED)
def test_official_weights_reproduce_the_published_logits(model, tmp_path):
    folder = Path(FOLDER)
    assert folder.is_dir(), f"NPVIT_OFFICIAL_WEIGHTS={FOLDER} is not a folder"
    args = ["-m", "npvit", "verify", "--model", model, "--weights", str(folder)]
    image = folder / next(a for a in load_anchors() if a.model == model).image_name
    if image.is_file():
        args += ["--image", str(image)]
    out = run_without_torch(args, tmp_path / "no_torch", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout

"""Official SSDLite checkpoints: the key map against ml-cvnets' key listings, and files written in
the official layout by torch.save converting without torch to the same outputs."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from npvit.models.ssdlite import RELEASES, SSDLite
from npvit.weights.keymap_detection import detector_names

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dense" / "cvnets"
LISTED = {"det_coco_ssd_mobilevit_xxs": "ssdlite_mobilevit_xxs_coco",
          "det_coco_ssd_mobilevit_xs": "ssdlite_mobilevit_xs_coco",
          "det_coco_ssd_mobilevit_s": "ssdlite_mobilevit_s_coco",
          "det_coco_ssd_mobilevitv2_050": "ssdlite_mobilevitv2_050_coco",
          "det_coco_ssd_mobilevitv2_100": "ssdlite_mobilevitv2_100_coco"}


@pytest.mark.parametrize("listing", list(LISTED))
def test_official_keys_map_onto_the_model(listing):
    path = SHARED / f"{listing}.tsv"
    if not path.is_file():
        pytest.skip("../shared/reference is absent")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    shapes = {key: () if shape == "-" else tuple(int(s) for s in shape.split("x"))
              for key, shape, *_ in rows}
    layout, renamed = detector_names(shapes)
    model = {k: np.shape(v) for k, v in SSDLite(LISTED[listing]).state_dict().items()}
    assert layout == "cvnets" and list(renamed) == list(model)   # same keys, same order
    assert renamed == model
    for key, shape, role, timm_key in rows:                     # the backbone follows the table
        if role == "backbone":
            assert f"backbone.{timm_key}" in renamed


SCRIPT = """
import json, sys
import numpy as np
import npvit
from npvit.weights import convert_checkpoint
x = np.load(sys.argv[1])
out = {}
for name, path in json.loads(sys.argv[2]).items():
    detected = convert_checkpoint(path)
    model = npvit.create_model(name, pretrained=path, dtype=np.float64).eval()
    boxes, logits = model(x)
    out[name + ".boxes"], out[name + ".logits"] = boxes, logits
    print(name, detected.model, detected.layout)
np.savez(sys.argv[3], **out)
"""


def test_official_layout_files_convert_without_torch_to_the_same_outputs(torch, tmp_path):
    from no_torch import run_without_torch
    from ssd_reference import official_state, random_reference
    from timm_reference import relative_error
    x = np.random.default_rng(0).random((2, 3, 96, 128))
    np.save(tmp_path / "x.npy", x)
    files, expected = {}, {}
    for i, name in enumerate(["ssdlite_mobilevit_xxs_coco", "ssdlite_mobilevitv2_050_coco"]):
        ref = random_reference(RELEASES[name].backbone, seed=10 + i, dtype="float32")
        files[name] = str(tmp_path / f"{name}.pt")
        torch.save(official_state(ref), files[name])
        with torch.no_grad():
            expected[name] = [t.double().numpy() for t in ref.double()(torch.from_numpy(x))]
    out = run_without_torch(["-c", SCRIPT, str(tmp_path / "x.npy"), json.dumps(files),
                             str(tmp_path / "out.npz")], tmp_path / "hook", env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    got = np.load(tmp_path / "out.npz")
    for name, (boxes, logits) in expected.items():
        assert f"{name} {name} cvnets" in lines                   # the model was recognised
        assert relative_error(got[name + ".boxes"], boxes) < 1e-9
        assert relative_error(got[name + ".logits"], logits) < 1e-9


def test_manifest_knows_the_eleven_files():
    from npvit.models import list_models
    from npvit.weights import DETECTION, official
    assert list(DETECTION) == list_models("detection") == list(RELEASES)
    counts = SHARED.parent / "counts.tsv"
    urls = ({r[0]: r for r in (line.split("\t") for line in counts.read_text().splitlines())}
            if counts.is_file() else None)
    for name, entry in DETECTION.items():
        assert official(name) is entry and entry.task == "detection"
        assert entry.map == RELEASES[name].map and entry.url.endswith("/" + entry.file_name)
        if urls is not None:
            from test_detection_models import counts_row
            row = urls[counts_row(name)]
            assert (entry.url, entry.params, entry.map) == (row[10], int(row[2]), float(row[9]))


def test_download_then_pretrained_true(torch, monkeypatch, server, tmp_path):
    """`npvit download NAME` for a detector: fetched from its manifest URL (here a loopback
    server), converted once to .npz, then create_model(NAME, pretrained=True) loads it."""
    import dataclasses
    import io
    import npvit
    from npvit.weights import DETECTION, pretrained_path
    from ssd_reference import official_state, random_reference
    name = "ssdlite_mobilevitv2_050_coco"
    buffer = io.BytesIO()
    torch.save(official_state(random_reference("mobilevitv2_050", seed=5, dtype="float32")), buffer)
    entry = DETECTION[name]
    server.files["/d/" + entry.file_name] = buffer.getvalue()
    monkeypatch.setitem(DETECTION, name, dataclasses.replace(entry, url=f"{server.url}/d/{entry.file_name}"))
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "cache"))
    npz = pretrained_path(name, progress=False)
    assert npz.name == f"{name}.npz" and (tmp_path / "cache" / entry.file_name).is_file()
    model = npvit.create_model(name, pretrained=True)
    expected = npvit.create_model(name, pretrained=str(tmp_path / "cache" / entry.file_name))
    for (k, a), (_, b) in zip(model.state_dict().items(), expected.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert server.requests == ["/d/" + entry.file_name]

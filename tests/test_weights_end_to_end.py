"""End to end: for every variant, a timm model with random weights and random BatchNorm
statistics is saved with torch.save in the exact ml-cvnets key layout (once also in the Hugging
Face layout, and as safetensors); ``npvit convert`` runs in a subprocess where torch cannot be
imported; the .npz it writes, loaded by npvit, gives timm's logits (float32, <= 1e-4)."""
import numpy as np
import pytest

from npvit.models import create_model, list_models
from no_torch import blocked_imports, run_without_torch
from official_layouts import cvnets_state_dict, hf_state_dict
from timm_reference import random_timm_model

TOLERANCE = 1e-4


def _convert_without_torch(args, tmp_path):
    hook_dir = tmp_path / "no_torch"
    out = run_without_torch(["-m", "npvit", "convert", *map(str, args)], hook_dir)
    assert out.returncode == 0, out.stderr
    assert blocked_imports(hook_dir) == []       # npvit did not even try to import torch
    return out.stdout


def _assert_same_logits(torch, timm_model, name, npz, size):
    x = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        expected = timm_model(torch.from_numpy(x)).numpy()
    model = create_model(name, pretrained=str(npz)).eval()
    got = model(x)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= TOLERANCE, np.abs(got - expected).max()


# Small images keep this affordable for ten variants; mobilevit_xxs also runs at 256x256.
@pytest.mark.parametrize("name", list_models())
def test_official_layout_converts_without_torch_to_the_same_logits(torch, tmp_path, name):
    timm_model = random_timm_model(name, seed=11)
    checkpoint = tmp_path / "official.pt"
    torch.save(cvnets_state_dict(timm_model.state_dict()), checkpoint)
    stdout = _convert_without_torch([checkpoint, "-o", tmp_path / "converted.npz"], tmp_path)
    assert f"(ml-cvnets layout) -> {tmp_path / 'converted.npz'}: {name}," in stdout   # detected
    _assert_same_logits(torch, timm_model, name, tmp_path / "converted.npz", 64)
    if name == "mobilevit_xxs":
        _assert_same_logits(torch, timm_model, name, tmp_path / "converted.npz", 256)


def test_hugging_face_layout_v1_with_split_qkv(torch, tmp_path):
    name = "mobilevit_xs"
    timm_model = random_timm_model(name, seed=12)
    torch.save(hf_state_dict(timm_model.state_dict()), tmp_path / "pytorch_model.bin")
    stdout = _convert_without_torch([tmp_path / "pytorch_model.bin", "--model", name], tmp_path)
    assert "(Hugging Face layout)" in stdout
    _assert_same_logits(torch, timm_model, name, tmp_path / "pytorch_model.npz", 64)


def test_hugging_face_layout_v2_as_safetensors(torch, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file
    name = "mobilevitv2_075"
    timm_model = random_timm_model(name, seed=13)
    save_file({k: v.contiguous() for k, v in hf_state_dict(timm_model.state_dict()).items()},
              tmp_path / "model.safetensors")
    stdout = _convert_without_torch([tmp_path / "model.safetensors"], tmp_path)
    assert f"(Hugging Face layout) -> {tmp_path / 'model.npz'}: {name}," in stdout
    _assert_same_logits(torch, timm_model, name, tmp_path / "model.npz", 64)


def test_convert_reports_a_wrong_shape_in_one_line(torch, tmp_path):
    state = cvnets_state_dict(random_timm_model("mobilevitv2_050").state_dict())
    state["layer_4.1.conv_proj.block.conv.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(state, tmp_path / "broken.pt")
    out = run_without_torch(["-m", "npvit", "convert", str(tmp_path / "broken.pt")], tmp_path / "h")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("npvit: error: ")
    assert "does not fit mobilevitv2_050: 1 mis-shaped: stages.3.1.conv_proj.conv.weight 8x8x1x1" \
           in out.stderr
    assert not (tmp_path / "broken.npz").exists()

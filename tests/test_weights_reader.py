"""read_checkpoint without torch: files written by torch.save / safetensors in the test, read
back by npvit's own reader and compared with torch's view of the same tensors."""
import io
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from npvit.errors import NpvitError
from npvit.weights import read_checkpoint, save_npz


def _as_numpy(t):
    """What npvit should return for a torch tensor: half types widened to float32."""
    import torch
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.numpy()


def _assert_same(got: dict, expected: dict):
    assert list(got) == list(expected)
    for k, t in expected.items():
        ref = _as_numpy(t)
        assert got[k].dtype == ref.dtype, k
        np.testing.assert_array_equal(got[k], ref, err_msg=k)


def test_dtypes_views_and_shared_storages(torch, tmp_path):
    base = torch.randn(6, 5)
    state = OrderedDict(
        f32=torch.randn(3, 4),
        f16=torch.randn(3, 4).half(),
        bf16=torch.randn(4, 2).bfloat16(),
        f64=torch.randn(2, 3, dtype=torch.float64),
        i64=torch.tensor(7),                           # num_batches_tracked is a 0-d int64
        base=base,
        transposed=base.t(),                           # non-contiguous view of a shared storage
        offset_slice=base[2:, 1:4],                    # storage offset + strides
        every_other=base[::2, ::3],
        half_view=torch.randn(5, 6).half()[1:, ::2],   # strided fp16
        bf16_view=torch.randn(4, 4).bfloat16().t()[1:],
        param=torch.nn.Parameter(torch.randn(3)),      # saved via _rebuild_parameter
        empty=torch.zeros(0, 3),
    )
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    got = read_checkpoint(path)
    _assert_same(got, state)
    assert all(v.flags.c_contiguous and v.flags.writeable for v in got.values())
    # views of one storage are independent copies: writing one does not change another
    got["base"][:] = 0
    assert np.abs(got["transposed"]).sum() > 0


def test_nested_wrappers_and_module_prefix(torch, tmp_path):
    weights = OrderedDict(a=torch.randn(2, 2), b=torch.randn(3))
    wrapped = {"epoch": 3, "model": {"state_dict": {f"module.{k}": v for k, v in weights.items()}},
               "optimizer": {"lr": 0.1}}
    torch.save(wrapped, tmp_path / "nested.pth")
    _assert_same(read_checkpoint(tmp_path / "nested.pth"), weights)
    torch.save({"model_state_dict": weights, "iterations": 10}, tmp_path / "cvnets_training.pt")
    _assert_same(read_checkpoint(tmp_path / "cvnets_training.pt"), weights)


def test_any_archive_prefix_and_big_endian_record(torch, tmp_path):
    """The name of the folder inside the zip is arbitrary; a 'big' byteorder record means the
    storages are big-endian (rewrite a little-endian file by hand to get one)."""
    weights = OrderedDict(w=torch.randn(3, 2), n=torch.tensor(5), h=torch.randn(4).half(),
                          b=torch.randn(4).bfloat16())
    torch.save(weights, tmp_path / "src.pt")
    with zipfile.ZipFile(tmp_path / "src.pt") as src, \
            zipfile.ZipFile(tmp_path / "renamed.pt", "w") as little, \
            zipfile.ZipFile(tmp_path / "big.pt", "w") as big:
        storage_dtypes = {"0": ">f4", "1": ">i8", "2": ">f2", "3": ">u2"}   # order of first use
        for info in src.infolist():
            inner = info.filename.split("/", 1)[1]
            data = src.read(info)
            little.writestr("some_other_name/" + inner, data)
            if inner == "byteorder":
                data = b"big"
            elif inner.startswith("data/"):
                key = inner.split("/")[1]
                data = np.frombuffer(data, storage_dtypes[key].replace(">", "<")).astype(
                    storage_dtypes[key]).tobytes()
            big.writestr("archive/" + inner, data)
    _assert_same(read_checkpoint(tmp_path / "renamed.pt"), weights)
    _assert_same(read_checkpoint(tmp_path / "big.pt"), weights)


def test_safetensors_including_bfloat16(torch, tmp_path):
    from safetensors.torch import save_file
    weights = OrderedDict(a=torch.randn(3, 4), b=torch.randn(5).half(), c=torch.randn(2, 2).bfloat16(),
                          d=torch.tensor([3], dtype=torch.int64))
    save_file(dict(weights), tmp_path / "w.safetensors")
    got = read_checkpoint(tmp_path / "w.safetensors")
    _assert_same({k: got[k] for k in weights}, weights)


def test_npz_round_trip(tmp_path, rng):
    state = {"a.weight": rng.standard_normal((3, 2)).astype(np.float32), "a.n": np.array(4)}
    save_npz(state, tmp_path / "w.npz")
    got = read_checkpoint(tmp_path / "w.npz")
    assert list(got) == list(state)
    for k in state:
        np.testing.assert_array_equal(got[k], state[k])
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]     # no temporary file left


class _RunsACommand:
    """Unpickling this calls os.system — what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_a_command_is_refused(torch, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.randn(2), "payload": _RunsACommand(marker)}, path)
    # sanity: the file really would run the command if unpickled naively
    with zipfile.ZipFile(path) as z:
        assert b"system" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    with pytest.raises(NpvitError, match=r"refused to load global (posix|os|nt)\.system from") as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_pickled_module_objects_are_refused(torch, tmp_path):
    torch.save(torch.nn.Linear(2, 3), tmp_path / "whole_module.pt")    # torch.save(model)
    with pytest.raises(NpvitError, match=r"refused to load global torch\.nn\.modules\.linear\.Linear"):
        read_checkpoint(tmp_path / "whole_module.pt")


def test_truncated_zip(torch, tmp_path):
    torch.save({"w": torch.randn(100, 100)}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(NpvitError, match=r"cut\.pt starts like a zip archive but cannot be "
                                         r"opened .* truncated or damaged") as e:
        read_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(e.value)


def test_zip_without_data_pkl(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:
        z.writestr("archive/readme.txt", "hello")
    with pytest.raises(NpvitError, match=r"zip archive without data\.pkl.*archive/readme\.txt"):
        read_checkpoint(tmp_path / "other.pt")


def test_empty_missing_and_unknown_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(NpvitError, match=r"empty\.pt is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(NpvitError, match=r"nope\.pt does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "page.pt").write_text("<html>404 Not Found</html>")
    with pytest.raises(NpvitError, match=r"page\.pt is not a checkpoint npvit can read"):
        read_checkpoint(tmp_path / "page.pt")


def test_legacy_torch_save_format_is_explained(torch, tmp_path):
    torch.save({"w": torch.randn(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(NpvitError, match=r"legacy \(pre-1\.6, non-zip\) torch\.save format"):
        read_checkpoint(tmp_path / "old.pt")


def test_view_past_the_end_of_its_storage_is_refused(torch, tmp_path):
    """A crafted file whose tensor claims more elements than its storage holds must not make
    npvit read memory outside the storage."""
    storage = object()

    class OversizedTensor:
        def __reduce__(self):   # size (4000,) over a storage of 4 floats
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (4000,), (1,), False, OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if obj is storage else None

    pickled = io.BytesIO()
    Pickler(pickled, protocol=2).dump({"w": OversizedTensor()})
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as z:
        z.writestr("archive/data.pkl", pickled.getvalue())
        z.writestr("archive/data/0", np.ones(4, "<f4").tobytes())
    with pytest.raises(NpvitError, match=r"reaches past its storage of 4 elements"):
        read_checkpoint(tmp_path / "bad.pt")

"""Hostile files and careless runs (issue 16): every case is a file this test assembles itself,
read in a subprocess under a time limit and an address-space limit. Asserted for each: the exit
code, exactly one error line naming the problem, no traceback, the peak RSS of the process, and
that no marker file appeared (no code from a file ran).

To stay fast, the Python-API cases run in ONE subprocess (`_api_batch`: one JSON line per
case), the CLI cases in another (`npvit.cli.main` called per case, its stdout/stderr captured),
and only what needs a real process of its own (closed stderr, a strict UTF-8 stdout, SIGTERM
and kill -9 during a write, a big image's peak RSS) gets one.
"""
from __future__ import annotations

import bz2
import json
import lzma
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hostile_files as H

MiB = 2**20
# A hostile file must cost at most this much memory in a process that reads many of them; each
# of the memory-amplification cases below would need 1 GiB or more if it were not refused.
PEAK_RSS_LIMIT = 500 * MiB


# --- the hostile files ------------------------------------------------------------------------
def _deep_tuple_key(depth: int) -> bytes:
    """{(((1,),),...): 1}: hashing a 300 000-deep tuple overflows the C stack (exit 139)."""
    return H.PROTO2 + H.EMPTY_DICT + H.EMPTY_TUPLE + H.TUPLE1 * depth + H.integer(1) + H.SETITEM + H.STOP


def _deep_lists(depth: int) -> bytes:
    """[[[...]]] built by appending each list into the one below it."""
    return H.PROTO2 + H.EMPTY_LIST * depth + H.APPEND * (depth - 1) + H.STOP


def _build_on(module: str, name: str, attribute: str) -> bytes:
    """BUILD with a slot state on an allowed global: setattr(global, attribute, 'pwned')."""
    state = H.NONE + H.EMPTY_DICT + H.string(attribute) + H.string("pwned") + H.SETITEM
    return (H.PROTO2 + H.EMPTY_DICT + H.string("x") + H.global_(module, name)
            + H.MARK + state + H.TUPLE + H.BUILD + H.SETITEM + H.STOP)


def _runs_command(marker: Path) -> bytes:
    return (H.PROTO2 + H.global_("os", "system") + H.MARK + H.string(f"touch {marker}")
            + H.TUPLE + H.REDUCE + H.STOP)


def _big_honest_storage_pickle(names) -> bytes:
    """One honest storage of 16 Mi floats (64 MiB), viewed whole by each of ``names``."""
    n = 16 * MiB
    return H.state_dict_pickle({k: H.tensor("0", n, 0, (n,), (1,)) for k in names})


def _hostile_files(tmp: Path, marker: Path) -> list[dict]:
    """[{name, call, path, expect, ...}]: what to do with each file and the substring its one
    error line must contain. call: read (read_checkpoint), convert (convert_checkpoint)."""
    f = tmp / "files"
    f.mkdir()
    one_float = np.ones(1, "<f4").tobytes()
    cases = []

    def add(name, path, expect, call="read", **extra):
        cases.append(dict(name=name, path=str(path), expect=expect, call=call, **extra))

    # 1. cycles through wrapper keys
    add("cycle", H.torch_zip(f / "cycle.pt", b"\x80\x02}q\x00X\x05\x00\x00\x00modelh\x00s."),
        "contains itself")
    add("cycle via two wrappers", H.torch_zip(f / "cycle2.pt", H.PROTO2 + H.EMPTY_DICT + b"q\x00"
        + H.string("state_dict") + H.EMPTY_DICT + H.string("model") + b"h\x00" + H.SETITEM
        + H.SETITEM + H.STOP), "contains itself")
    add("cycle, pretrained=", f / "cycle.pt", "contains itself", call="pretrained")
    # 2. what a pickle may build
    add("300000-deep tuple key", H.torch_zip(f / "deep.pt", _deep_tuple_key(300_000),
                                             pickle_compression=zipfile.ZIP_DEFLATED),
        "nests objects more than 64 deep")
    add("5000-deep tuple key", H.torch_zip(f / "deep5000.pt", _deep_tuple_key(5000)),
        "nests objects more than 64 deep")
    add("100000-deep lists", H.torch_zip(f / "lists.pt", _deep_lists(100_000)),
        "nests objects more than 64 deep")
    add("1.1 M operations", H.torch_zip(f / "ops.pt", H.PROTO2 + H.NONE * 1_100_000 + H.STOP),
        "more than 1,000,000 pickle operations")
    add("33 MiB data.pkl", H.torch_zip(f / "big_pickle.pt", H.PROTO2 + b"N" * (33 * MiB) + H.STOP),
        "data.pkl is 34,603,011 bytes")
    add("INST opcode", H.torch_zip(f / "inst.pt", H.PROTO2 + H.MARK + b"ios\nsystem\n" + H.STOP),
        "pickle operation INST")
    add("EXT1 opcode", H.torch_zip(f / "ext.pt", H.PROTO2 + b"\x82\x01" + H.STOP),
        "pickle operation EXT1")
    add("os.system", H.torch_zip(f / "system.pt", _runs_command(marker)),
        "refused to load global os.system")
    add("BUILD on _rebuild_tensor_v2", H.torch_zip(f / "build.pt", _build_on(
        "torch._utils", "_rebuild_tensor_v2", "__qualname__")), "BUILD")
    add("BUILD on a storage type", H.torch_zip(f / "build_storage.pt", _build_on(
        "torch", "FloatStorage", "name")), "BUILD")
    add("BUILD on OrderedDict", H.torch_zip(f / "build_od.pt", _build_on(
        "collections", "OrderedDict", "fromkeys")), "BUILD")
    add("truncated pickle", H.torch_zip(f / "cut.pt", H.PROTO2 + H.EMPTY_DICT + H.MARK),
        "damaged data.pkl")
    # 3. memory amplification: views, compressed members, .npz headers
    add("three stride-0 views of 4 bytes", H.torch_zip(f / "stride0.pt", H.state_dict_pickle(
        {k: H.tensor("0", 1, 0, (2**28,), (0,)) for k in "abc"}), {"0": one_float}),
        "repeats elements of its storage")
    add("views adding up to 10x their storage", H.torch_zip(
        f / "overlap.pt", _big_honest_storage_pickle("abcdefghij"), {"0": bytes(64 * MiB)}),
        "view 671,088,640 bytes of storages holding 67,108,864")
    add("size inf", H.torch_zip(f / "inf.pt", H.state_dict_pickle(
        {"w": H.tensor("0", 1, 0, (float("inf"),), (1,))}), {"0": one_float}), "must be integers")
    add("size 2**70", H.torch_zip(f / "huge.pt", H.state_dict_pickle(
        {"w": H.tensor("0", 1, 0, (2**70,), (1,))}), {"0": one_float}), "reaches past its storage")
    add("numel 2**70", H.torch_zip(f / "numel.pt", H.state_dict_pickle(
        {"w": H.tensor("0", 2**70, 0, (1,), (1,))}), {"0": one_float}), "has 4 bytes, expected")
    for method, label in ((zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_DEFLATED, "deflate"),
                          (zipfile.ZIP_LZMA, "lzma")):
        n = 16 * MiB if method != zipfile.ZIP_LZMA else 4 * MiB
        add(f"{label} bomb", H.torch_zip(f / f"bomb_{label}.pt", H.state_dict_pickle(
            {"w": H.tensor("0", n, 0, (n,), (1,))}), {"0": bytes(4 * n)}, compression=method),
            "possible zip bomb")
    npz_bomb = f / "bomb.npz"
    with zipfile.ZipFile(npz_bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", H.npy_bytes("<f4", (16 * MiB,), bytes(64 * MiB)))
    add("deflated .npz member", npz_bomb, "possible zip bomb")
    npz_claim = f / "claims.npz"
    with zipfile.ZipFile(npz_claim, "w") as z:
        z.writestr("w.npy", H.npy_bytes("<f4", (10**15,), one_float))
    add(".npz header claiming 4 PB", npz_claim, "declares (1000000000000000,)")
    npz_object = f / "object.npz"
    with zipfile.ZipFile(npz_object, "w") as z:
        z.writestr("w.npy", H.npy_bytes("|O", (1,), b"\x80\x02N."))
    add(".npz of Python objects", npz_object, "Python objects")
    # 4. malformed containers
    add("encrypted member", H.patch_zip(H.honest_tensor_file(f / "encrypted.pt"),
                                        "archive/data.pkl", flags=0x1), "is encrypted")
    add("compression method 99", H.patch_zip(H.honest_tensor_file(f / "method99.pt"),
                                             "archive/data/0", method=99), "compression method 99")
    for method, label, junk in ((zipfile.ZIP_DEFLATED, "deflate", b"\xff" * 64),
                                (zipfile.ZIP_BZIP2, "bzip2", b"BZh9" + b"\x00" * 60),
                                (zipfile.ZIP_LZMA, "lzma", b"\x00" * 64)):
        path = f / f"corrupt_{label}.pt"
        H.torch_zip(path, H.state_dict_pickle({"w": H.tensor("0", 16, 0, (16,), (1,))}),
                    {"0": bytes(64)}, compression=method)
        data = bytearray(path.read_bytes())      # overwrite the compressed bytes of data/0
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("archive/data/0")
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[start:start + info.compress_size] = (junk * info.compress_size)[:info.compress_size]
        path.write_bytes(bytes(data))
        add(f"corrupt {label} member", path, "member archive/data/0 is damaged")
    crc = H.honest_tensor_file(f / "crc.pt")
    data = bytearray(crc.read_bytes())
    with zipfile.ZipFile(crc) as z:
        info = z.getinfo("archive/data/0")
    data[info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)] ^= 0xFF
    crc.write_bytes(bytes(data))
    add("CRC-damaged storage", crc, "member archive/data/0 is damaged")
    truncated = H.honest_tensor_file(f / "truncated.pt")
    truncated.write_bytes(truncated.read_bytes()[:-30])
    add("truncated zip", truncated, "cannot be opened")
    add("complex storage", H.torch_zip(f / "complex.pt", H.state_dict_pickle(
        {"w": H.tensor("0", 1, 0, (1,), (1,), storage="ComplexFloatStorage")}), {"0": bytes(8)}),
        "unsupported dtype complex64")
    add("5 MB key", H.torch_zip(f / "long_key.pt", H.PROTO2 + H.EMPTY_DICT + H.string("k" * 5_000_000)
                                + H.integer(1) + H.SETITEM + H.STOP), "holds no state dict")
    add("directory", f, "is a directory, not a regular file")
    os.mkfifo(f / "fifo.pt")
    add("FIFO", f / "fifo.pt", "is a FIFO (named pipe), not a regular file")
    add("device", "/dev/zero", "is a device, not a regular file")
    add("OSError on read", "/proc/self/mem", "cannot read checkpoint /proc/self/mem: Input/output")
    if os.geteuid() != 0:                       # root reads any file
        unreadable = H.honest_tensor_file(f / "unreadable.pt")
        unreadable.chmod(0)
        add("unreadable", unreadable, "Permission denied")
    # values a model cannot take (convert_checkpoint against mobilevit_xxs)
    for label, change, expect in (
            ("0-d head", lambda s: s.update({"head.fc.weight": np.float32(1)}), "mis-shaped"),
            ("0-d bias", lambda s: s.update({"head.fc.bias": np.float32(1)}), "mis-shaped"),
            ("str weight", lambda s: s.update({"stem.conv.weight": np.array(["x"] * 8)}),
             "unsupported dtype <U1 in stem.conv.weight"),
            ("complex weight", lambda s: s.update({"stem.conv.weight": s["stem.conv.weight"]
                                                   .astype(np.complex64)}), "unsupported dtype complex64"),
            ("datetime weight", lambda s: s.update({"stem.bn.running_mean": np.zeros(16, "M8[s]")}),
             "unsupported dtype datetime64"),
            ("structured weight", lambda s: s.update({"stem.bn.bias": np.zeros(16, "f4,f4")}),
             "unsupported dtype"),
            ("NaN weight", lambda s: s["head.fc.weight"].__setitem__((0, 0), np.nan),
             "non-finite values in head.fc.weight")):
        state = {k: np.array(v) for k, v in np.load(f / ".." / "xxs.npz").items()}
        change(state)
        np.savez(f / f"{label.replace(' ', '_')}.npz", **state)
        add(label, f / f"{label.replace(' ', '_')}.npz", expect, call="convert", model="mobilevit_xxs")
    hf = f / "hf_qkv.npz"
    prefix = "mobilevit.encoder.layer.2.transformer.layer.0.attention.attention."
    np.savez(hf, **{prefix + "query.weight": np.zeros((4, 4), "f4"),
                    prefix + "key.weight": np.zeros((4, 3), "f4"),
                    prefix + "value.weight": np.zeros((4, 4), "f4")})
    add("HF q/k/v that do not concatenate", hf, "must be equal", call="convert")
    # a file that cannot fit the model is refused before its 320 MiB storage is read (reading
    # it would take the batch past PEAK_RSS_LIMIT)
    foreign = f / "foreign.pt"
    n = 80 * MiB
    H.torch_zip(foreign, H.state_dict_pickle({"foreign.weight": H.tensor("0", n, 0, (n,), (1,))}))
    with zipfile.ZipFile(foreign, "a") as z, z.open("archive/data/0", "w", force_zip64=True) as w:
        for _ in range(80):
            w.write(bytes(4 * MiB))
    add("320 MiB storage, foreign keys", foreign, "match no MobileViT layout", call="convert")
    return cases


# The child: read every case through the Python API, one JSON line each, then report whether
# anything a file did outlived it.
_API_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from collections import OrderedDict
    import numpy as np
    import npvit
    from npvit.weights import convert_checkpoint, read_checkpoint, reader

    def trace():
        f = reader._rebuild_tensor
        return [f.__qualname__, repr(f.__defaults__), sorted(vars(f)), sorted(dir(OrderedDict)),
                sorted(reader._StorageType.__dict__)]

    before = trace()
    for case in json.load(open(sys.argv[1])):
        start = time.monotonic()
        try:
            if case["call"] == "read":
                read_checkpoint(case["path"])
            elif case["call"] == "convert":
                convert_checkpoint(case["path"], model=case.get("model"))
            elif case["call"] == "pretrained":
                npvit.create_model("mobilevit_xxs", pretrained=case["path"])
            elif case["call"] == "create_model":
                kwargs = dict(case["kwargs"])
                if "dtype" in kwargs:
                    kwargs["dtype"] = getattr(np, kwargs["dtype"])
                npvit.create_model(case.get("model", "mobilevit_xxs"), **kwargs)
            elif case["call"] == "empty batch":
                npvit.create_model("mobilevit_xxs")(np.zeros((0, 3, 64, 64), np.float32))
            result = dict(type=None, message="")
        except Exception as e:
            result = dict(type=type(e).__name__, message=str(e))
        result.update(name=case["name"], seconds=time.monotonic() - start)
        print(json.dumps(result), flush=True)
    print(json.dumps(dict(name="__trace__", unchanged=trace() == before,
                          peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
""")


@pytest.fixture(scope="module")
def xxs_npz(tmp_path_factory):
    """An honest mobilevit_xxs state dict as .npz (the base the value cases alter)."""
    import npvit
    folder = tmp_path_factory.mktemp("hostile")
    np.savez(folder / "xxs.npz", **npvit.create_model("mobilevit_xxs", seed=0).state_dict())
    return folder


def test_hostile_files_through_the_python_api(xxs_npz):
    tmp = xxs_npz
    marker = tmp / "MARKER"
    cases = _hostile_files(tmp, marker)
    cases += [dict(name=f"create_model({k}={v!r})", call="create_model", kwargs={k: v}, expect=e)
              for k, v, e in (("num_classes", -1, "num_classes"), ("num_classes", 10**12, "num_classes"),
                              ("dtype", "int8", "dtype must be float32 or float64"),
                              ("seed", -1, "seed must be a non-negative integer"))]
    # the dense-prediction releases check their arguments the same way
    cases += [dict(name=f"create_model({m}, {k}={v!r})", call="create_model", model=m,
                   kwargs={k: v}, expect=e)
              for m in ("deeplabv3_mobilevitv2_050_voc", "ssdlite_mobilevitv2_050_coco")
              for k, v, e in (("dtype", "int8", "dtype must be float32 or float64"),
                              ("seed", -1, "seed must be a non-negative integer"))]
    cases.append(dict(name="create_model(deeplabv3, num_classes=-1)", call="create_model",
                      model="deeplabv3_mobilevitv2_050_voc", kwargs={"num_classes": -1},
                      expect="num_classes"))
    cases.append(dict(name="model(x[:0])", call="empty batch", expect="the batch is empty"))
    # positive controls: the same builders give files that read
    cases.append(dict(name="honest control", call="read", path=str(H.honest_tensor_file(tmp / "ok.pt")),
                      expect=None))
    cases.append(dict(name="honest xxs control", call="convert", path=str(tmp / "xxs.npz"), expect=None))
    (tmp / "cases.json").write_text(json.dumps(cases))

    out = H.run(["-c", _API_CHILD, tmp / "cases.json"], tmp, timeout=150, address_space=4 * 2**30)
    assert out.returncode == 0, out          # a crash (exit 139) or a traceback would show here
    results = {r["name"]: r for r in map(json.loads, out.stdout.splitlines())}
    trace = results.pop("__trace__")
    problems = []
    for case in cases:
        got = results.get(case["name"])
        if got is None:
            problems.append(f"{case['name']}: no result")
        elif case["expect"] is None:
            if got["type"] is not None:
                problems.append(f"{case['name']}: control failed: {got}")
        elif got["type"] != "NpvitError" or case["expect"] not in got["message"] \
                or "\n" in got["message"] or len(got["message"]) > 1000:
            problems.append(f"{case['name']}: {got['type']}: {got['message'][:300]!r} "
                            f"(expected NpvitError with {case['expect']!r})")
        elif "path" in case and case["expect"] and Path(case["path"]).name not in got["message"]:
            problems.append(f"{case['name']}: the line does not name the file: {got['message'][:200]!r}")
        elif got["seconds"] > 10:
            problems.append(f"{case['name']}: took {got['seconds']:.1f} s")
    assert not problems, "\n".join(problems)
    assert trace["unchanged"], "a refused file left a trace on the reader's stand-ins"
    assert trace["peak"] < PEAK_RSS_LIMIT and out.peak_rss < PEAK_RSS_LIMIT, out
    assert not marker.exists()


# --- the command line ---------------------------------------------------------------------------
_CLI_CHILD = textwrap.dedent("""
    import contextlib, io, json, os, sys, time
    from npvit.cli import main

    for case in json.load(open(sys.argv[1])):
        os.environ.update(case.get("env", {}))
        out, err = io.StringIO(), io.StringIO()
        start = time.monotonic()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(case["argv"])
            except SystemExit as e:          # argparse
                rc = e.code
            except BaseException as e:       # an escaped exception: a bug
                rc = "escaped " + type(e).__name__ + ": " + str(e)[:300]
        for name in case.get("env", {}):
            del os.environ[name]
        print(json.dumps(dict(name=case["name"], rc=rc, stdout=out.getvalue()[-3000:],
                              stderr=err.getvalue()[-3000:], seconds=time.monotonic() - start)),
              flush=True)
""")


def _cli_cases(tmp: Path) -> list[dict]:
    """[{name, argv, rc, expect, env}]: each must exit with ``rc`` and print exactly one
    stderr line containing ``expect``."""
    f = tmp / "cli"
    f.mkdir()
    cycle = H.torch_zip(f / "cycle.pt", b"\x80\x02}q\x00X\x05\x00\x00\x00modelh\x00s.")
    deep = H.torch_zip(f / "deep.pt", _deep_tuple_key(300_000), pickle_compression=zipfile.ZIP_DEFLATED)
    long_key = H.torch_zip(f / "long_key.pt", H.PROTO2 + H.EMPTY_DICT + H.string("k\n" * 2_500_000)
                           + H.integer(1) + H.SETITEM + H.STOP)
    os.mkfifo(f / "fifo.pt")
    os.mkfifo(f / "fifo.jpg")
    a_file = f / "a_file"
    a_file.write_text("not a folder")
    Image.new("RGB", (64, 64), (120, 30, 200)).save(f / "good.png")
    Image.new("RGB", (32, 9900)).save(f / "tall.png")
    (f / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
                                b"/Helvetica findfont 12 scalefont setfont\nshowpage\n")
    existing = f / "existing.npz"
    existing.write_bytes(b"keep me")
    xxs = tmp / "xxs.npz"
    empty_home = {"NPVIT_HOME": str(f / "empty_home")}
    damaged_home = f / "damaged_home"
    damaged_home.mkdir()
    (damaged_home / "mobilevit_xxs.npz").write_bytes(b"PK\x03\x04 garbage")
    folder = f / "images"
    (folder / "n01440764" / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "n01440764" / "sub" / "deep.png")
    Image.new("RGB", (64, 64)).save(folder / "loose.png")
    cases = [
        ("convert a cycle", ["convert", cycle], 2, "contains itself"),
        ("convert a deep tuple", ["convert", deep], 2, "nests objects more than 64 deep"),
        ("convert a 5 MB key with newlines", ["convert", long_key], 2, "holds no state dict"),
        ("--weights DIR", ["predict", f / "good.png", "--weights", f], 2, "is a directory, not a regular file"),
        ("--weights FIFO", ["predict", f / "good.png", "--weights", f / "fifo.pt"], 2, "is a FIFO (named pipe)"),
        ("--weights device", ["predict", f / "good.png", "--weights", "/dev/zero"], 2, "is a device"),
        ("verify --weights FIFO", ["verify", "--weights", f / "fifo.pt"], 2, "is a FIFO"),
        ("predict --seed -1", ["predict", "--seed", "-1"], 2, "--seed must be a non-negative"),
        ("gradcheck --seed -1", ["gradcheck", "--seed", "-1"], 2, "--seed must be a non-negative"),
        ("predict --size 100000", ["predict", "--model", "mobilevit_xxs", "--size", "100000"], 2,
         "the largest --size that fits is"),
        ("eval --size 100000", ["eval", f / "images", "--weights", xxs, "--size", "100000"], 2,
         "the largest --size that fits is"),
        ("scoremap --size 100000", ["scoremap", f / "good.png", "--model", "mobilevit_xxs",
                                    "--size", "100000"], 2, "the largest --size that fits is"),
        ("scoremap -o x.unknownext", ["scoremap", f / "good.png", "--model", "mobilevitv2_050",
                                      "-o", f / "x.unknownext"], 2, "unknown file type '.unknownext'"),
        ("bench --heads 0", ["bench", "attention", "--heads", "0"], 2, "--heads must be at least 1"),
        ("bench --dim 0", ["bench", "attention", "--dim", "0"], 2, "--dim must be at least 1"),
        ("bench --proj-len 0", ["bench", "attention", "--proj-len", "0"], 2, "--proj-len must be"),
        ("bench --plot FILE/x.png", ["bench", "attention", "--quick", "--plot", a_file / "x.png"], 2,
         "is a file, not a folder"),
        ("bench --plot x.unknown", ["bench", "attention", "--quick", "--plot", f / "x.unknown"], 2,
         "unknown file type"),
        ("convert -o DIR", ["convert", xxs, "-o", f], 2, "is a directory"),
        ("convert -o FILE/x", ["convert", xxs, "-o", a_file / "x.npz"], 2, "is a file, not a folder"),
        ("convert -o FIFO", ["convert", xxs, "-o", f / "fifo.pt"], 2, "is not a regular file"),
        ("convert -o existing", ["convert", xxs, "-o", existing], 2, "already exists; pass --force"),
        ("FIFO image", ["predict", f / "fifo.jpg"], 1, "is a FIFO (named pipe), not a regular image"),
        ("EPS named .jpg", ["predict", f / "eps.jpg"], 1, "not an image file npvit reads"),
        ("32x9900 image", ["predict", f / "tall.png"], 1, "too elongated"),
        ("NPVIT_HOME is a file", ["predict", "--download", "--model", "mobilevit_xxs", f / "good.png"],
         2, "is a file (or inside one), not a folder", {"NPVIT_HOME": str(a_file)}),
        ("download --dir FILE", ["download", "mobilevit_xxs", "--dir", a_file], 2, "is a file"),
        ("damaged cached file", ["predict", "--model", "mobilevit_xxs", f / "good.png"], 2,
         "run `npvit download mobilevit_xxs --force`", {"NPVIT_HOME": str(damaged_home)}),
    ]
    result = [dict(name=c[0], argv=list(map(str, c[1])), rc=c[2], expect=c[3],
                   env=c[4] if len(c) > 4 else empty_home) for c in cases]
    result.append(dict(name="convert --force", argv=["convert", str(xxs), "-o", str(f / "new.npz"),
                                                     "--force"], rc=0, expect=None, env=empty_home))
    result.append(dict(name="eval layout notes", argv=["eval", str(folder), "--weights", str(xxs)],
                       rc=2, env=empty_home,
                       expect=["ignored 1 image file(s) directly in", "one level too deep",
                               "no labelled images"]))
    return result


def test_hostile_inputs_on_the_command_line(xxs_npz):
    tmp = xxs_npz
    cases = _cli_cases(tmp)
    (tmp / "cli_cases.json").write_text(json.dumps(cases))
    out = H.run(["-c", _CLI_CHILD, tmp / "cli_cases.json"], tmp, timeout=150, address_space=4 * 2**30)
    assert out.returncode == 0, out
    results = {r["name"]: r for r in map(json.loads, out.stdout.splitlines())}
    problems = []
    for case in cases:
        got = results[case["name"]]
        lines = got["stderr"].splitlines()
        expected = case["expect"] if isinstance(case["expect"], list) else [case["expect"]]
        if got["rc"] != case["rc"]:
            problems.append(f"{case['name']}: exit {got['rc']}, expected {case['rc']}: {got['stderr'][:300]!r}")
        elif case["expect"] is None:
            continue
        elif len(lines) != len(expected) or "Traceback" in got["stderr"] or not all(
                e in line for e, line in zip(expected, lines)):
            problems.append(f"{case['name']}: stderr {got['stderr'][:400]!r}, expected "
                            f"{len(expected)} line(s) with {expected}")
        elif any(len(line) > 1100 for line in lines) or got["stdout"]:
            problems.append(f"{case['name']}: a line of {max(map(len, lines))} characters or "
                            f"output on stdout {got['stdout'][:200]!r}")
    assert not problems, "\n".join(problems)
    assert (tmp / "cli" / "existing.npz").read_bytes() == b"keep me"    # not overwritten
    assert stat.S_ISFIFO(os.stat(tmp / "cli" / "fifo.pt").st_mode)        # still a FIFO
    assert (tmp / "cli" / "new.npz").is_file()
    assert not list((tmp / "cli").glob(".*.part"))
    assert out.peak_rss < PEAK_RSS_LIMIT + 300 * MiB, out     # it also builds and runs models


def test_errors_never_reach_stdout_when_stderr_is_closed(tmp_path):
    out = H.run(["-m", "npvit", "predict", "--seed", "-1"], tmp_path, close_stderr=True,
                address_space=2 * 2**30)
    assert out.returncode == 2 and out.stdout == "", out


def test_a_file_name_that_is_not_utf8_prints_on_a_strict_utf8_stdout(tmp_path):
    name = os.fsdecode(b"photo-\xff.png")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / name)
    out = H.run(["-m", "npvit", "predict", name, "--size", "64", "--topk", "1"], tmp_path,
                env={"PYTHONIOENCODING": "utf-8:strict", "NPVIT_HOME": str(tmp_path / "home")},
                address_space=2 * 2**30)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out
    assert "photo-\\udcff.png" in out.stdout


def test_huge_and_elongated_images_cost_bounded_memory(tmp_path):
    """A 258 KB 9400x9400 PNG took 2.9 GB in the v1 pipeline (float64 resize of the whole
    image) and a 32x9900 one 1.96 GB; now the first costs about its decoded size and the
    second is refused from its header."""
    Image.new("RGB", (9400, 9400), (200, 10, 10)).save(tmp_path / "big.png")
    Image.new("RGB", (32, 9900)).save(tmp_path / "tall.png")
    out = H.run(["-m", "npvit", "predict", "big.png", "tall.png", "--model", "mobilevit_xxs",
                 "--size", "64", "--topk", "1"], tmp_path,
                env={"NPVIT_HOME": str(tmp_path / "home")}, address_space=2 * 2**30)
    assert out.returncode == 1, out                   # one image refused, one classified
    assert out.stdout.startswith("big.png") and "Traceback" not in out.stderr
    assert "tall.png: a 32x9900 image is too elongated" in out.stderr
    decoded = 9400 * 9400 * 3
    assert out.peak_rss < 2 * decoded, out            # was > 10x the decoded size


_SLOW_WRITER = textwrap.dedent("""
    import signal, sys, time
    from npvit.cli import _terminate
    from npvit.outputs import write_atomically
    signal.signal(signal.SIGTERM, _terminate)

    def write(f):
        f.write(b"half of a new file")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

    write_atomically(sys.argv[1], write)
""")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, how):
    target = tmp_path / "map.png"
    target.write_bytes(b"the old figure")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert child.stdout.readline() == b"writing\n"
    child.send_signal(how)
    child.wait(timeout=30)
    assert target.read_bytes() == b"the old figure"
    parts = list(tmp_path.glob(".map.png.*.part"))
    if how == signal.SIGTERM:
        assert parts == []            # removed on the way out
    else:
        assert len(parts) == 1        # kill -9 cannot be caught: the next write removes it
        from npvit.outputs import write_atomically
        write_atomically(target, lambda f: f.write(b"the new figure"))
        assert target.read_bytes() == b"the new figure"
        assert list(tmp_path.glob(".map.png.*.part")) == []


# --- --size: the working-set estimate behind `check_size` -------------------------------------
def test_largest_size_is_the_last_multiple_of_32_whose_working_set_fits():
    from npvit.inference import largest_size, working_set_bytes
    for name, training in (("mobilevit_xxs", False), ("mobilevitv2_050", True)):
        budget = working_set_bytes(name, 640, batch=2, training=training)
        assert largest_size(name, budget, batch=2, training=training) == 640
        assert working_set_bytes(name, 672, batch=2, training=training) > budget


def test_the_working_set_estimate_matches_the_measured_peak(tmp_path):
    """predict at 768 on v1 (attention maps ~ size^4): the estimate is within a factor 1.5 of
    the peak RSS the process really reaches, beyond its start-up baseline."""
    from npvit.inference import working_set_bytes
    Image.new("RGB", (800, 800), (90, 60, 30)).save(tmp_path / "x.png")
    env = {"NPVIT_HOME": str(tmp_path / "home")}
    base = H.run(["-m", "npvit", "predict", "x.png", "--model", "mobilevit_xxs", "--size", "64"],
                 tmp_path, env=env)
    big = H.run(["-m", "npvit", "predict", "x.png", "--model", "mobilevit_xxs", "--size", "768"],
                tmp_path, env=env)
    assert base.returncode == big.returncode == 0, (base, big)
    measured = big.peak_rss - base.peak_rss
    estimate = working_set_bytes("mobilevit_xxs", 768) - working_set_bytes("mobilevit_xxs", 64)
    assert estimate / 1.5 < measured < estimate * 1.5, (measured / MiB, estimate / MiB)

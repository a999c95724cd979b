"""npvit.data.load_image: every Pillow mode becomes 8-bit RGB by a stated rule, EXIF orientation
is applied, and every bad file gives one NpvitError line that names the file."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from npvit.data import MIN_SIDE, example_image_path, load_image
from npvit.errors import NpvitError


def _pixels(h=40, w=56, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def _save(tmp_path, image, name):
    path = tmp_path / name
    image.save(path)
    return path


# --- modes: what each one becomes ---------------------------------------------------------------

def test_rgb_png_round_trips_exactly(tmp_path):
    rgb = _pixels()
    out = load_image(_save(tmp_path, Image.fromarray(rgb), "rgb.png"))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), rgb)


def test_grey_is_copied_into_all_three_channels(tmp_path):
    grey = _pixels(channels=1)[..., 0]
    out = np.asarray(load_image(_save(tmp_path, Image.fromarray(grey), "l.png")))
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=-1))


@pytest.mark.parametrize("mode, channels", [("RGBA", 4), ("LA", 2)])
def test_alpha_is_dropped_not_composited(tmp_path, mode, channels):
    data = _pixels(channels=channels)
    data[..., -1] = 0  # fully transparent: compositing on white would give 255 everywhere
    image = Image.fromarray(data, mode)
    out = np.asarray(load_image(_save(tmp_path, image, f"{mode}.png")))
    colour = data[..., :3] if mode == "RGBA" else np.stack([data[..., 0]] * 3, axis=-1)
    np.testing.assert_array_equal(out, colour)


def test_palette_with_transparency_gives_the_palette_colours(tmp_path):
    rgb = _pixels()
    image = Image.fromarray(rgb).quantize(16)
    image.info["transparency"] = 0
    path = _save(tmp_path, image, "p.png")
    palette = np.array(image.getpalette()[:48], np.uint8).reshape(16, 3)
    expected = palette[np.asarray(Image.open(path))]  # palette lookup, alpha ignored
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)


def test_sixteen_bit_grey_keeps_the_high_byte(tmp_path):
    grey16 = np.random.default_rng(1).integers(0, 65536, (40, 56), dtype=np.uint16)
    path = _save(tmp_path, Image.fromarray(grey16), "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out, np.stack([(grey16 >> 8).astype(np.uint8)] * 3, axis=-1))


def test_cmyk_and_float_and_int_follow_pillows_conversion(tmp_path):
    cmyk = Image.fromarray(_pixels(channels=4), "CMYK")
    path = _save(tmp_path, cmyk, "cmyk.jpg")
    np.testing.assert_array_equal(np.asarray(load_image(path)),
                                  np.asarray(Image.open(path).convert("RGB")))
    values = np.linspace(-20, 300, 40 * 56).reshape(40, 56)
    for mode, dtype in (("F", np.float32), ("I", np.int32)):
        path = _save(tmp_path, Image.fromarray(values.astype(dtype), mode), f"{mode}.tif")
        out = np.asarray(load_image(path))
        np.testing.assert_array_equal(out[..., 0], np.clip(values.astype(dtype), 0, 255).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    rgb = _pixels(h=40, w=60)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.png"
    Image.fromarray(rgb).save(path, exif=exif)
    out = load_image(path)
    assert out.size == (40, 60)  # (width, height): now portrait
    np.testing.assert_array_equal(np.asarray(out), np.rot90(rgb, k=-1))


def test_minimum_size_is_accepted(tmp_path):
    assert load_image(_save(tmp_path, Image.fromarray(_pixels(MIN_SIDE, MIN_SIDE)), "ok.png")).size == (32, 32)


def test_example_photo_ships_with_matplotlib():
    image = load_image(example_image_path())
    assert image.mode == "RGB" and image.size == (512, 600)


# --- bad files: one line naming the file and the problem ----------------------------------------

def _png_header_only(width, height):
    """A PNG that declares width x height RGB pixels and holds none: what a decompression bomb
    looks like to the decoder before it starts."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _truncated(tmp_path, fmt):
    path = tmp_path / f"whole.{fmt}"
    Image.fromarray(_pixels(200, 300)).save(path)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


BAD_FILES = {  # case: (make the file in tmp_path, a word the message must contain)
    "missing": (lambda t: t / "nope.jpg", "no such file"),
    "directory": (lambda t: t, "directory"),
    "empty": (lambda t: _write(t / "empty.jpg", b""), "empty"),
    "not an image": (lambda t: _write(t / "notes.jpg", b"hello"), "not an image"),
    "truncated jpeg": (lambda t: _truncated(t, "jpg"), "truncated"),
    "truncated png": (lambda t: _truncated(t, "png"), "truncated"),
    "decompression bomb": (lambda t: _write(t / "bomb.png", _png_header_only(20000, 20000)),
                           "decompression bomb"),
    "too small": (lambda t: _save(t, Image.fromarray(_pixels(31, 200)), "small.png"), "at least 32"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_each_bad_file_gives_one_line_naming_it(tmp_path, case):
    make, problem = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(NpvitError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


def test_pillows_warning_zone_counts_as_a_bomb(tmp_path, monkeypatch):
    # Between MAX_IMAGE_PIXELS and twice that, Pillow only warns; npvit refuses.
    path = _save(tmp_path, Image.fromarray(_pixels(60, 60)), "warn.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60 * 60 - 1)
    with pytest.raises(NpvitError, match="decompression bomb"):
        load_image(path)


def test_a_mode_pillow_cannot_convert_is_one_line(tmp_path, monkeypatch):
    # No file format we can write opens in such a mode ("La", premultiplied grey + alpha, is
    # one Pillow cannot convert to RGB), so stand in for Pillow's refusal.
    import npvit.data.image as image_module

    def refuse(image):
        raise ValueError("conversion from La to RGB not supported")
    monkeypatch.setattr(image_module, "to_rgb", refuse)
    path = _save(tmp_path, Image.fromarray(_pixels()), "la.png")
    with pytest.raises(NpvitError, match=r"la\.png: cannot convert colour mode .*from La"):
        load_image(path)


def test_example_photo_loads_and_preprocesses_without_torch(tmp_path):
    from no_torch import blocked_imports, run_without_torch

    code = ("import npvit.data as d\n"
            "x = d.preprocess_batch([d.load_image(d.example_image_path())] * 2, 'cvnets-v1')\n"
            "print(d.check_input(x).shape, d.imagenet_classes()[652].label)\n")
    out = run_without_torch(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 3, 256, 256) military uniform"
    assert blocked_imports(tmp_path) == []  # never even tried

"""The evaluation pipelines equal references written here from the ml-cvnets / OpenCV / HF
definitions (and torchvision's and OpenCV's own code where installed), for portrait,
landscape, square, tiny and very elongated images in several Pillow modes."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

import npvit.data as data
from npvit.data.preprocess import linear_taps
from npvit.errors import NpvitError
from npvit.functional.resize import interpolation_matrix

SIZES = {  # (width, height)
    "landscape": (640, 480),
    "portrait": (300, 451),
    "square": (300, 300),
    "tiny": (32, 45),                 # upscaled 9x
    "elongated": (35, 400),           # 288 x 3291 before the crop
    "short side already 288": (500, 288),
    "large": (1024, 700),
    "odd crop offset": (205, 200),    # long side 295: (295 - 256) / 2 = 19.5
}


def _photo(width, height, seed=0):
    """A smooth random colour image (a few sinusoids) with noise: like a photo, unlike pure
    noise it has structure at every scale the resize filters care about."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [sum(np.sin(2 * np.pi * (rng.uniform(0, 8) * xx + rng.uniform(0, 8) * yy)
                           + rng.uniform(0, 6)) for _ in range(3)) for _ in range(3)]
    img = 128 + 40 * np.stack(channels, -1) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


# --- references, written from the definitions (not calling npvit's resize code) ------------------

def ml_cvnets_resized_size(w, h, size):
    """ml-cvnets ``_resize_fn`` (v0.1 image.py and v0.2 image_pil.py) for an int size."""
    if w < h:
        return size, int(size * h / w)
    return int(size * w / h), size


def ml_cvnets_center_crop(pixels, size):
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return pixels[top:top + size, left:left + size]


def opencv_linear_matrix(n_in, n_out):
    """OpenCV's INTER_LINEAR (imgproc/resize.cpp, non-area mode) as an (n_out, n_in) matrix,
    one output sample at a time: fx = (dx + 0.5) * scale - 0.5, sx = floor(fx), fx -= sx;
    sx < 0 -> (0, fx = 0); sx >= n_in - 1 -> (n_in - 1, fx = 0)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for dx in range(n_out):
        fx = (dx + 0.5) * scale - 0.5
        sx = int(np.floor(fx))
        fx -= sx
        if sx < 0:
            sx, fx = 0, 0.0
        if sx >= n_in - 1:
            sx, fx = n_in - 1, 0.0
        m[dx, sx] += 1 - fx
        m[dx, min(sx + 1, n_in - 1)] += fx
    return m


def opencv_linear_unrounded(rgb, new_w, new_h):
    """float64 (new_h, new_w, 3): the exact bilinear values before cv2 rounds them to uint8."""
    a_h, a_w = opencv_linear_matrix(rgb.shape[0], new_h), opencv_linear_matrix(rgb.shape[1], new_w)
    return np.stack([a_h @ rgb[..., c].astype(np.float64) @ a_w.T for c in range(3)], -1)


def rounding_ties(image, crop=256, resize=288):
    """bool (3, crop, crop): where the cvnets-v1 value before rounding is x.5 (up to float
    error); there the order of the float operations decides which way it rounds."""
    rgb = np.asarray(image.convert("RGB"))
    new_w, new_h = ml_cvnets_resized_size(rgb.shape[1], rgb.shape[0], resize)
    values = ml_cvnets_center_crop(opencv_linear_unrounded(rgb, new_w, new_h), crop)
    return (np.abs(values % 1 - 0.5) < 1e-6).transpose(2, 0, 1)[::-1]  # BGR like the output


def assert_matches_reference(x, image, pipeline, crop=256, resize=288):
    expected = reference(image, pipeline, crop, resize)
    if pipeline == "cvnets-v1":  # at exact ties allow the other rounding, one grey level
        ties = rounding_ties(image, crop, resize)
        assert np.abs(x - expected)[ties].max(initial=0) <= 1 / 255 + 1e-7
        x, expected = x[~ties], expected[~ties]
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-7)


def reference_pixels(image, pipeline, crop=256, resize=288):
    """uint8 (crop, crop, 3) RGB after the pipeline's resize and centre crop."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    new_w, new_h = ml_cvnets_resized_size(w, h, resize)
    if (new_w, new_h) == (w, h):
        resized = rgb
    elif pipeline == "cvnets-v1":
        resized = np.rint(opencv_linear_unrounded(rgb, new_w, new_h)).astype(np.uint8)
    else:
        pil_filter = {"cvnets-v2": Image.BICUBIC, "hf": Image.BILINEAR}[pipeline]
        resized = np.asarray(image.convert("RGB").resize((new_w, new_h), pil_filter))
    return ml_cvnets_center_crop(resized, crop)


def reference(image, pipeline, crop=256, resize=288):
    """float32 (3, crop, crop) in [0, 1] with the pipeline's channel order."""
    chw = reference_pixels(image, pipeline, crop, resize).transpose(2, 0, 1) / 255.0
    if pipeline in ("cvnets-v1", "hf"):
        chw = chw[[2, 1, 0]]  # BGR
    return chw.astype(np.float32)


# --- the pipelines against the references -----------------------------------------------------

@pytest.mark.parametrize("pipeline", list(data.PIPELINES))
@pytest.mark.parametrize("size", list(SIZES))
def test_pipeline_equals_reference(pipeline, size):
    image = _photo(*SIZES[size])
    x = data.preprocess(image, pipeline)
    assert x.shape == (3, 256, 256) and x.dtype == np.float32 and x.flags.c_contiguous
    assert_matches_reference(x, image, pipeline)


def _in_mode(rgb, mode):
    """(the RGB image converted to ``mode``, the RGB image npvit must see in its place)."""
    if mode == "P":
        palette = rgb.quantize(64, method=Image.Quantize.FASTOCTREE)
        return palette, palette.convert("RGB")
    if mode == "I;16":  # 16-bit grey 257 * v: its high byte is v again
        grey = rgb.convert("L")
        return Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), grey.convert("RGB")
    if mode == "L":
        return rgb.convert("L"), rgb.convert("L").convert("RGB")
    return rgb.convert(mode), rgb  # RGBA: alpha dropped


@pytest.mark.parametrize("pipeline", list(data.PIPELINES))
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_pipelines_accept_every_mode(pipeline, mode):
    image, seen_as = _in_mode(_photo(300, 451, seed=1), mode)
    assert image.mode == mode
    assert_matches_reference(data.preprocess(image, pipeline), seen_as, pipeline)


def test_hf_flips_the_channels_exactly_once():
    red = Image.new("RGB", (300, 400), (255, 0, 0))
    x = data.preprocess(red, "hf")
    np.testing.assert_array_equal(x[2], 1.0)   # blue, green, RED
    np.testing.assert_array_equal(x[:2], 0.0)
    image = _photo(640, 480, seed=2)
    rgb = reference_pixels(image, "hf").transpose(2, 0, 1).astype(np.float32) / 255
    np.testing.assert_array_equal(data.preprocess(image, "hf")[::-1], rgb)


@pytest.mark.parametrize("pipeline, order", [("cvnets-v1", "BGR"), ("cvnets-v2", "RGB")])
def test_channel_order_of_the_ml_cvnets_pipelines(pipeline, order):
    x = data.preprocess(Image.new("RGB", (300, 300), (255, 0, 0)), pipeline)
    assert x[order.index("R")].min() == 1.0 and x.sum() == 256 * 256


@pytest.mark.parametrize("crop, resize, expected_resize", [(224, None, 256), (384, 384, 384),
                                                           (160, 200, 200)])
def test_other_sizes(crop, resize, expected_resize):
    image = _photo(500, 375, seed=3)
    for pipeline in data.PIPELINES:
        x = data.preprocess(image, pipeline, crop_size=crop, resize_size=resize)
        assert_matches_reference(x, image, pipeline, crop, expected_resize)


def test_batch_stacks_single_images():
    images = [_photo(*SIZES[s], seed=i) for i, s in enumerate(["portrait", "landscape", "tiny"])]
    batch = data.preprocess_batch(images, "cvnets-v1")
    assert batch.shape == (3, 3, 256, 256) and batch.dtype == np.float32
    for image, x in zip(images, batch):
        np.testing.assert_array_equal(x, data.preprocess(image, "cvnets-v1"))


@given(n_in=st.integers(1, 40), n_out=st.integers(1, 40))
def test_opencv_taps_are_pytorch_bilinear_without_align_corners(n_in, n_out):
    # The image resize and the network's feature-map resize sample the same positions.
    i0, i1, frac = linear_taps(n_in, n_out)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    np.testing.assert_allclose(m, interpolation_matrix(n_in, n_out, align_corners=False),
                               atol=1e-12)
    np.testing.assert_allclose(m, opencv_linear_matrix(n_in, n_out), atol=1e-12)


# --- the real libraries, where installed --------------------------------------------------------

@pytest.mark.parametrize("size", list(SIZES))
def test_cvnets_v2_equals_torchvision(size, torch):
    transforms = pytest.importorskip("torchvision.transforms")
    image = _photo(*SIZES[size], seed=4)
    resize = transforms.Resize(288, interpolation=transforms.InterpolationMode.BICUBIC)
    resized = resize(image)
    ours = data.preprocess(image, "cvnets-v2")
    w, h = resized.size
    if int(round((h - 256) / 2.0)) == (h - 256) // 2 and int(round((w - 256) / 2.0)) == (w - 256) // 2:
        theirs = transforms.Compose([resize, transforms.CenterCrop(256), transforms.ToTensor()])(image)
    else:
        # torchvision rounds the crop offset (19.5 -> 20); ml-cvnets' CenterCrop floors it (19).
        # Same resized pixels, cropped where ml-cvnets crops.
        theirs = transforms.ToTensor()(resized)[:, (h - 256) // 2:(h - 256) // 2 + 256,
                                                (w - 256) // 2:(w - 256) // 2 + 256]
    theirs = theirs.numpy()
    np.testing.assert_array_equal(np.rint(ours * 255), np.rint(theirs * 255))  # same pixels
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)


@pytest.mark.parametrize("size", list(SIZES))
def test_cvnets_v1_is_within_one_grey_level_of_opencv(size):
    """ml-cvnets v0.1 with OpenCV itself: cv2.imread gives BGR, cv2.resize INTER_LINEAR, crop,
    /255. cv2 resizes uint8 in fixed point (11-bit weights), npvit in float64 then rounds,
    so pixels may differ by one grey level, never more."""
    cv2 = pytest.importorskip("cv2")
    image = _photo(*SIZES[size], seed=5)
    bgr = np.asarray(image)[..., ::-1]
    h, w = bgr.shape[:2]
    new_w, new_h = ml_cvnets_resized_size(w, h, 288)
    if (new_w, new_h) != (w, h):  # ml-cvnets skips the resize when the short side is right
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    theirs = ml_cvnets_center_crop(bgr, 256).transpose(2, 0, 1).astype(np.float32) / 255
    ours = data.preprocess(image, "cvnets-v1")
    assert np.abs(ours - theirs).max() <= 1 / 255 + 1e-6


# --- options and bad requests ------------------------------------------------------------------

def test_default_pipeline_per_family():
    from npvit.models import list_models
    for name in list_models():
        expected = "cvnets-v2" if name.startswith("mobilevitv2") else "cvnets-v1"
        assert data.default_pipeline(name) == expected
    with pytest.raises(NpvitError, match="resnet50"):
        data.default_pipeline("resnet50")


@pytest.mark.parametrize("kwargs, problem", [
    (dict(pipeline="cvnets"), "unknown preprocessing 'cvnets'; choose one of cvnets-v1, cvnets-v2, hf"),
    (dict(crop_size=256, resize_size=200), "smaller than the crop size"),
    (dict(crop_size=16), "below the 32-pixel minimum"),
])
def test_bad_options_are_one_line_errors(kwargs, problem):
    with pytest.raises(NpvitError, match=problem):
        data.preprocess(_photo(64, 64), **kwargs)


def test_extremely_elongated_image_is_refused_before_resizing(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with pytest.raises(NpvitError, match="32x4000 image is too elongated"):
        data.preprocess(Image.new("RGB", (32, 4000)), "cvnets-v2")


# --- the model-input guard ---------------------------------------------------------------------

@pytest.mark.parametrize("bad, problem", [
    (np.zeros((3, 64, 64), np.float32), r"shape \(N, 3, H, W\), got \(3, 64, 64\)"),
    (np.zeros((1, 4, 64, 64), np.float32), "shape"),
    (np.zeros((1, 3, 31, 64), np.float32), "at least 32x32 pixels, got 31x64"),
    (np.zeros((1, 3, 64, 64), np.uint8), "floating-point"),
    (np.full((1, 3, 64, 64), np.nan, np.float32), "NaN or Inf"),
    (np.pad(np.zeros((1, 3, 63, 64)), ((0, 0), (0, 0), (1, 0), (0, 0)), constant_values=np.inf),
     "NaN or Inf"),
])
def test_check_input_refuses(bad, problem):
    with pytest.raises(ValueError, match=problem):
        data.check_input(bad)


def test_check_input_passes_a_preprocessed_batch_through():
    x = data.preprocess_batch([_photo(64, 80)], "hf")
    assert data.check_input(x) is x

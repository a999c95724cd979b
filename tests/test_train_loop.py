"""The training loop, the image folder, its loader and the augmentation.

The end-to-end property: mobilevit_xxs trained from scratch with npvit's own backward, AdamW and
schedule learns a small synthetic task (stripe orientation): >= 95 % on its training images and
>= 60 % on held-out ones, in eval mode.
"""
import numpy as np
import pytest
from PIL import Image

import npvit
from npvit.data import preprocess
from npvit.errors import NpvitError
from npvit.train import (AdamW, ImageLoader, WarmupCosineSchedule, eval_transform, evaluate,
                         find_image_folder, random_resized_crop_box, train_one_epoch,
                         train_step, train_transform, weight_decay_groups)


def stripes(n, size, rng):
    """n images (n, 3, size, size) of stripes in two random colours, with random period and
    phase; the label is the orientation: 0 horizontal, 1 vertical, 2 and 3 the diagonals."""
    rows, cols = np.mgrid[0:size, 0:size]
    coordinate = [rows, cols, rows + cols, rows - cols]
    y = np.arange(n) % 4
    x = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        period = rng.integers(4, 9)
        on = (coordinate[y[i]] + rng.integers(0, period)) % period < period // 2   # (size, size)
        x[i] = np.where(on, rng.random((3, 1, 1)), rng.random((3, 1, 1)))
    return x, y


def test_a_model_trained_from_scratch_learns_stripe_orientation():
    """256 training images of 32x32, 4 classes, 15 epochs of 16 steps; then, in eval mode
    (BatchNorm running statistics), >= 95 % on the training set and >= 60 % on 128 held-out
    images it never saw (chance: 25 %). The batches are reshuffled every epoch: with fixed
    batches the network can lean on each batch's BatchNorm statistics and do worse in eval mode
    than in training.

    Margin, measured with seeds 0-4 in place of 0: training 98.0-99.6 %, held-out 77.3, 82.0,
    83.6, 84.4, 85.2 %; 60 % is 17 points below the worst (about 5 binomial standard
    deviations on 128 images)."""
    rng = np.random.default_rng(0)
    x, y = stripes(256, 32, rng)
    x_held_out, y_held_out = stripes(128, 32, rng)
    model = npvit.create_model("mobilevit_xxs", num_classes=4, seed=0)
    epochs, batch = 15, 16
    opt = AdamW(weight_decay_groups(model.named_parameters(), 0.01), lr=2e-3)
    sched = WarmupCosineSchedule(opt, 2e-3, total_steps=epochs * len(x) // batch,
                                 warmup_steps=len(x) // batch)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        batches = [(x[order[i:i + batch]], y[order[i:i + batch]]) for i in range(0, len(x), batch)]
        train_one_epoch(model, batches, opt, sched, progress=False)

    def in_order(x, y):
        return [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]

    trained = evaluate(model, in_order(x, y), progress=False)
    held_out = evaluate(model, in_order(x_held_out, y_held_out), progress=False)
    assert trained["accuracy"] >= 0.95, trained
    assert held_out["accuracy"] >= 0.60, held_out


def test_frozen_backbone_changes_only_the_head_and_gets_eval_mode_head_gradients():
    """With freeze_backbone the backbone runs as a fixed feature extractor: no parameter or
    BatchNorm statistic outside head.fc changes, and head.fc's gradient is exactly the one a full
    backward pass of the model in eval mode gives."""
    rng = np.random.default_rng(1)
    x, y = rng.random((4, 3, 64, 64)), rng.integers(0, 3, 4)
    model = npvit.create_model("mobilevitv2_050", num_classes=3, dtype=np.float64, seed=0)
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}

    model.eval()
    model.zero_grad()
    loss_full, cache = npvit.functional.cross_entropy_forward(model(x), y, 0.1)
    model.backward(npvit.functional.cross_entropy_backward(cache))
    expected = {k: p.grad.copy() for k, p in model.head.fc.named_parameters("head.fc")}

    opt = AdamW(model.head.fc.named_parameters("head.fc"), lr=0.0)    # lr 0: keep the weights
    model.head.train()
    loss, _ = train_step(model, x, y, opt, label_smoothing=0.1, freeze_backbone=True)
    assert loss == pytest.approx(loss_full, rel=1e-12)
    for k, p in model.head.fc.named_parameters("head.fc"):
        np.testing.assert_allclose(p.grad, expected[k], rtol=1e-10, atol=1e-14)

    opt = AdamW(model.head.fc.named_parameters("head.fc"), lr=0.01)
    train_one_epoch(model, [(x, y)] * 2, opt, freeze_backbone=True, progress=False)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k]) != k.startswith("head.fc."), k


# --- augmentation -------------------------------------------------------------------------------

@pytest.mark.parametrize("width, height", [(300, 200), (64, 64), (40, 90)])
def test_random_resized_crop_boxes_lie_inside_and_follow_scale_and_ratio(width, height):
    rng = np.random.default_rng(2)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(width, height, rng)
        assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
        # rounding w and h to whole pixels moves area and ratio a little
        assert 0.08 * width * height * 0.8 <= w * h <= width * height
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 / 0.85


@pytest.mark.parametrize("width, height", [(1000, 10), (10, 1000), (50, 50)])
def test_random_resized_crop_fallback_equals_torchvision(torch, width, height):
    """An image so elongated that no random box fits falls back to the centred box with the
    ratio clamped, exactly as torchvision's RandomResizedCrop.get_params; a square image with
    scale (1, 1) and ratio (1, 1) gives the whole image in both."""
    transforms = pytest.importorskip("torchvision.transforms")
    scale, ratio = ((0.08, 1.0), (3 / 4, 4 / 3)) if width != height else ((1.0, 1.0), (1.0, 1.0))
    top, left, h, w = transforms.RandomResizedCrop.get_params(
        torch.zeros(3, height, width), scale, ratio)
    assert random_resized_crop_box(width, height, np.random.default_rng(0), scale, ratio) == \
        (left, top, w, h)


def test_train_transform_output_channel_order_and_randomness():
    image = Image.new("RGB", (80, 60), (255, 0, 0))          # pure red
    rng = np.random.default_rng(3)
    v1 = train_transform("cvnets-v1", 48)(image, rng)
    v2 = train_transform("cvnets-v2", 48)(image, rng)
    assert v1.shape == v2.shape == (3, 48, 48) and v1.dtype == np.float32
    np.testing.assert_allclose(v1[2], 1.0)                   # BGR: red is the last channel
    np.testing.assert_allclose(v2[0], 1.0)                   # RGB: red is the first
    ramp = np.tile(np.arange(200, dtype=np.uint8), (150, 1))                   # grey, left to right
    gradient = Image.fromarray(ramp).convert("RGB")
    t = train_transform("cvnets-v2", 32)
    outputs = [t(gradient, rng)[0] for _ in range(20)]
    flipped = [out[0, 0] > out[0, -1] for out in outputs]     # the ramp now falls to the right
    assert any(flipped) and not all(flipped)
    assert len({out.tobytes() for out in outputs}) == len(outputs)


def test_eval_transform_is_the_model_familys_preprocessing():
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (70, 90, 3), np.uint8))
    np.testing.assert_array_equal(eval_transform("cvnets-v1", 64)(image),
                                  preprocess(image, "cvnets-v1", crop_size=64))


# --- image folders and the loader -----------------------------------------------------------

def write_images(folder, n, colour=(0, 128, 255), size=40):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), colour).save(folder / f"{i}.png")


def test_train_and_val_folders(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c in ("dog", "cat"):
            write_images(tmp_path / split / c, n)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    s = find_image_folder(tmp_path)
    assert s.classes == ["cat", "dog"]
    assert [(p.parent.name, label) for p, label in s.train] == [("cat", 0)] * 3 + [("dog", 1)] * 3
    assert len(s.val) == 4 and s.layout == "train/ and val/"


def test_class_folders_are_split_by_a_seeded_shuffle(tmp_path):
    write_images(tmp_path / "a", 10)
    write_images(tmp_path / "b", 2)
    s = find_image_folder(tmp_path, val_fraction=0.2, seed=0)
    assert sorted(s.train + s.val) == sorted((p, int(p.parent.name == "b"))
                                              for p in tmp_path.glob("*/*.png"))
    assert [label for _, label in s.val] == [0, 0, 1]      # 20 % of 10; at least one of 2
    assert find_image_folder(tmp_path, 0.2, seed=0) == s
    assert find_image_folder(tmp_path, 0.2, seed=1).val != s.val
    assert find_image_folder(tmp_path, 0.0).val == []


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "no such directory"),
    (lambda root: root.mkdir(), "no class folders"),
    (lambda root: write_images(root / "only", 2), "one class"),
    (lambda root: (write_images(root / "a", 1), (root / "b").mkdir()), "b has no image files"),
    (lambda root: write_images(root / "train" / "a", 1), "val does not"),
    (lambda root: (write_images(root / "train" / "a", 1), write_images(root / "train" / "b", 1),
                   write_images(root / "val" / "a", 1), write_images(root / "val" / "c", 1)),
     "different classes"),
])
def test_unusable_folders_are_refused_in_one_line(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(NpvitError, match=message) as e:
        find_image_folder(root)
    assert "\n" not in str(e.value)


def test_loader_batches_depend_only_on_seed_and_epoch(tmp_path):
    rng = np.random.default_rng(5)
    for c in range(3):
        write_images(tmp_path / str(c), 5, tuple(int(v) for v in rng.integers(0, 256, 3)))
    s = find_image_folder(tmp_path, val_fraction=0.0)
    loader = ImageLoader(s.train, train_transform("cvnets-v2", 32), 4, shuffle=True,
                         drop_last=True, seed=7)
    assert len(loader) == 3                                  # 15 images: the last 3 dropped

    def epoch(e):
        loader.set_epoch(e)
        return [(x.copy(), y.copy()) for x, y in loader]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(first, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, second))
    x, y = first[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    in_order = ImageLoader(s.train, eval_transform("cvnets-v2", 32), 4)
    assert len(in_order) == 4 and [len(y) for _, y in in_order] == [4, 4, 4, 3]

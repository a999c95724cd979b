"""npvit.outputs.save_image: the one atomic writer for Pillow images (detect, segment, synthetic)."""
import numpy as np
import pytest
from PIL import Image

from npvit.errors import NpvitError
from npvit.outputs import save_image


def _picture():
    return Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))


@pytest.mark.parametrize("name, format", [("a.png", "PNG"), ("a.JPG", "JPEG"), ("a.jpeg", "JPEG")])
def test_the_ending_names_the_format_and_no_part_file_is_left(tmp_path, name, format):
    path = save_image(_picture(), tmp_path / "sub" / name)
    with Image.open(path) as back:
        assert back.format == format and back.size == (6, 4)
        if format == "PNG":     # lossless: the very pixels
            assert np.array_equal(np.asarray(back), np.asarray(_picture()))
    assert sorted(p.name for p in path.parent.iterdir()) == [name]


def test_an_explicit_format_wins_over_the_ending(tmp_path):
    path = save_image(_picture(), tmp_path / "labels.anything", format="PNG")
    with Image.open(path) as back:
        assert back.format == "PNG"


def test_an_unknown_ending_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(NpvitError, match=r"no image format '\.xyz'") as e:
        save_image(_picture(), tmp_path / "a.xyz")
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_save_keeps_the_old_file_and_leaves_no_part_file(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"the old picture")
    with pytest.raises(NpvitError, match="cannot write mode LA as JPEG"):   # Pillow refuses it
        save_image(Image.new("LA", (3, 3)), target, format="JPEG")
    assert target.read_bytes() == b"the old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]

"""The ImageNet-1k class list: 1000 unique wnids in sorted order (the order classifiers number
their outputs in), readable labels, and the same list timm ships."""
import importlib.util
import re
from pathlib import Path

import pytest

from npvit.data import imagenet_classes, wnid_to_index

TOOL = Path(__file__).resolve().parent.parent / "tools" / "make_imagenet_classes.py"


def test_thousand_unique_wnids_in_sorted_order():
    classes = imagenet_classes()
    assert [c.index for c in classes] == list(range(1000))
    wnids = [c.wnid for c in classes]
    assert wnids == sorted(set(wnids))
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert all(c.label and c.name and "\t" not in c.label for c in classes)
    assert all(wnid_to_index()[c.wnid] == c.index for c in classes)


def test_file_header_says_where_the_list_comes_from():
    header = (Path(__file__).resolve().parent.parent / "npvit" / "data" / "imagenet_classes.tsv"
              ).read_text().splitlines()[:5]
    assert any("tools/make_imagenet_classes.py" in line for line in header)
    assert any("timm" in line for line in header)


def test_equals_timms_list():
    pytest.importorskip("timm")
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert [c.wnid for c in imagenet_classes()] == list(info.label_names())
    assert [c.label for c in imagenet_classes()] == list(info.label_descriptions())


def test_generator_reproduces_the_file():
    pytest.importorskip("timm")
    spec = importlib.util.spec_from_file_location("make_imagenet_classes", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.read_timm_lists() == [(c.wnid, c.label) for c in imagenet_classes()]

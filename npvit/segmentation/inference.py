"""Segmenting a photo with a release, exactly as its evaluation does: the release's
preprocessing (preprocess.py), then ``model.predict`` at the photo's own size.

    model, source = npvit.inference.load_model("deeplabv3_mobilevitv2_050_voc")
    mask = segment(model, load_image("street.jpg"))      # int64 (H, W) logit channels
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import NpvitError
from ..models import SegmentationModel
from .preprocess import segmentation_input

# The smallest MobileViTv2 DeepLabv3 on PASCAL VOC (6.2 M parameters, 75.07 mIoU): 21 everyday
# classes, and its preprocessing (PIL bicubic, RGB) needs nothing beyond Pillow.
DEFAULT_SEGMENTATION_MODEL = "deeplabv3_mobilevitv2_050_voc"


def segment(model: SegmentationModel, image: Image.Image) -> np.ndarray:
    """RGB PIL image -> (H, W) int64 class channels at the image's size (eval mode required)."""
    if not isinstance(model, SegmentationModel):
        raise NpvitError(f"{model.name} is not a segmentation model (see `npvit models --task segmentation`)")
    x = segmentation_input(image, model.release.preprocess)
    return model.predict(x, size=(image.height, image.width))[0]

"""Training recipes: the augmentation, regularisation and optimiser settings ``npvit finetune``
starts from, chosen as a whole with ``--recipe`` and overridden one by one with its flags.

imagenet   ml-cvnets' ImageNet-1k recipe for MobileViT (config/classification/imagenet/
           mobilevit*.yaml): random resized crop of 8-100 % of the image area, horizontal flip,
           label smoothing 0.1, AdamW with weight decay 0.05 (ml-cvnets: v1 0.01, v2 0.05).
           Right for large, varied data; from scratch on a few hundred images it throws too
           much away (a crop of 8 % of the image often misses the object) and learns slowly.
small      from scratch on small data (hundreds to a few thousand images), chosen by measurement
           on the synthetic shapes task (docs/training_small_data.md has the runs): milder
           crops, no label smoothing, a larger learning rate and less weight decay, and
           validation on the whole image (resized to size, no margin cropped away), so an
           object near the border is still seen and the synthetic task's boxes are the
           network's boxes. (Measured: with the 32-pixel margin cropped away a trained
           mobilevit_xxs scores 99.0 % instead of 98.5 % on 200 held-out images, the same
           within noise.) The model file records the resize size, so predict, eval and
           scoremap prepare images as the validation did.
imagenet validates as ml-cvnets: short side to size + 32, centre crop.

The peak learning rate depends on what trains: ``lr`` from scratch or for a new head on a
frozen backbone, ``finetune_lr`` when every layer of loaded weights trains (gentle, so the
pre-trained features are not destroyed in the first steps).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import NpvitError


@dataclass(frozen=True)
class Recipe:
    name: str
    lr: float
    finetune_lr: float
    weight_decay: float
    label_smoothing: float
    crop_scale: tuple[float, float]   # random resized crop: share of the image area (min, max)
    flip: bool                        # random horizontal flip
    eval_margin: int                  # validation: short side to size + eval_margin, centre crop


RECIPES = {r.name: r for r in (
    Recipe("imagenet", lr=1e-3, finetune_lr=2e-4, weight_decay=0.05, label_smoothing=0.1,
           crop_scale=(0.08, 1.0), flip=True, eval_margin=32),
    Recipe("small", lr=2e-3, finetune_lr=2e-4, weight_decay=0.01, label_smoothing=0.0,
           crop_scale=(0.5, 1.0), flip=True, eval_margin=0),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise NpvitError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]

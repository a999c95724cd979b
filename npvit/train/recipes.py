"""Training recipes: the augmentation, regularisation and optimiser settings ``npvit finetune``
starts from, chosen as a whole with ``--recipe`` and overridden one by one with its flags.

imagenet   ml-cvnets' ImageNet-1k recipe for MobileViT (config/classification/imagenet/
           mobilevit*.yaml): random resized crop of 8-100 % of the image area, horizontal flip,
           label smoothing 0.1, AdamW with weight decay 0.05 (ml-cvnets: v1 0.01, v2 0.05).
           Right for large, varied data; from scratch on a few hundred images it throws too
           much away (a crop of 8 % of the image often misses the object) and learns slowly.
small      from scratch on small data (hundreds to a few thousand images), chosen by measurement
           on the synthetic shapes task (docs/training_small_data.md has the runs): milder
           crops, no label smoothing, a larger learning rate and less weight decay.
Both validate as npvit predict and eval run the model: short side to size + 32, centre crop
(measured on the synthetic task: cropping that margin away costs nothing, 99.0 % against
98.5 % on the whole image, mobilevit_xxs, 200 held-out images).

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


RECIPES = {r.name: r for r in (
    Recipe("imagenet", lr=1e-3, finetune_lr=2e-4, weight_decay=0.05, label_smoothing=0.1,
           crop_scale=(0.08, 1.0), flip=True),
    Recipe("small", lr=2e-3, finetune_lr=2e-4, weight_decay=0.01, label_smoothing=0.0,
           crop_scale=(0.5, 1.0), flip=True),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise NpvitError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]

"""Training pieces: the loss (re-exported from functional), optimisers, the learning-rate
schedule, gradient clipping, checkpoints, the training loop, and image folders with their
training augmentation."""
from ..functional.loss import cross_entropy_backward, cross_entropy_forward
from .augment import eval_transform, random_resized_crop_box, train_transform
from .checkpoint import checkpoint_arrays, checkpoint_meta, load_checkpoint, save_checkpoint
from .clip import clip_grad_norm
from .folder import ImageFolderSplit, ImageLoader, find_image_folder
from .optim import SGD, AdamW, Optimizer, weight_decay_groups
from .run_folder import RunFolder
from .schedule import WarmupCosineSchedule
from .trainer import (NonFiniteLoss, backbone_features, evaluate, set_train_mode,
                      train_one_epoch, train_step)

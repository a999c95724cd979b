"""Training pieces: the loss (re-exported from functional), optimisers, the learning-rate
schedule, gradient clipping and checkpoints."""
from ..functional.loss import cross_entropy_backward, cross_entropy_forward
from .checkpoint import load_checkpoint, save_checkpoint
from .clip import clip_grad_norm
from .optim import SGD, AdamW, Optimizer, weight_decay_groups
from .schedule import WarmupCosineSchedule

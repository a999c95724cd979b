"""npvit: MobileViT and MobileViTv2 in NumPy, every forward and backward written by hand."""
from .heap import keep_freed_memory

keep_freed_memory()   # freed arrays stay in the process for the next one (npvit/heap.py)

from . import data, functional, nn, weights
from .gradcheck import check_gradients
from .models import create_model, list_models
from . import inference
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

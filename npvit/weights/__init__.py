"""Official weights without PyTorch.

    read_checkpoint(path)            .pt/.pth (torch zip), .safetensors, .npz -> {name: ndarray}
    convert_checkpoint(path, model)  + ml-cvnets / Hugging Face names -> npvit (timm) names,
                                     model detected from keys and shapes, strict shape check
    OFFICIAL / official(name)        the ten official checkpoints (manifest.json); SEGMENTATION:
                                     the segmentation releases (official(name) finds them too)
    local_weights(name[, folder])    the .npz or official file already in the cache (or folder)
    pretrained_path(name)            download once into the cache, convert once to .npz
    load_pretrained(name, True|path) the state dict behind create_model(name, pretrained=...)
    write_model_npz / read_model_meta  a model file that names its variant, classes, input
                                     size and preprocessing (what npvit finetune writes)
"""
from .convert import Converted, convert_checkpoint, save_npz
from .download import (DownloadError, cache_dir, convert_cached, download, fetch, load_pretrained,
                       local_weights, pretrained_path)
from .keymap import detect_layout, to_npvit_names
from .reader import read_checkpoint
from .registry import OFFICIAL, Checkpoint, check_state, detect_model, num_parameters, official
from .meta import (META_KEY, ModelFile, check_meta, load_model_file, model_meta, read_model_meta,
                   write_model_npz)
from .registry import SEGMENTATION
from .registry import DETECTION

"""Images in, model input out: loading (`load_image`), the named evaluation pipelines
(`preprocess`, `preprocess_batch`), the model-input guard (`check_input`) and the ImageNet-1k
class names (`imagenet_classes`); the synthetic shapes task (`make_synthetic`)."""
from .image import IMAGE_EXTENSIONS, MIN_SIDE, example_image_path, image_files, load_image, to_rgb
from .imagenet import ImageNetClass, imagenet_classes, wnid_to_index
from .segmentation_classes import SegmentationClass, segmentation_classes
from .preprocess import (DEFAULT_CROP_SIZE, PIPELINES, Pipeline, check_input, default_pipeline,
                         get_pipeline, preprocess, preprocess_batch, preprocess_resized,
                         preprocessed_box)
from .synthetic import SyntheticSet, make_synthetic, write_image_folder

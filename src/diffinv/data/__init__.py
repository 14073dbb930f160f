"""Data: MNIST and Fashion-MNIST in the 32x32 frame, image files and folders, demo images."""

from diffinv.data.datasets import SPLITS, ImageSet, canonical_name, get_images, load_split
from diffinv.data.demo import demo_images
from diffinv.data.images import read_folder, read_image, save_image, save_panel

__all__ = [
    "SPLITS",
    "ImageSet",
    "canonical_name",
    "demo_images",
    "get_images",
    "load_split",
    "read_folder",
    "read_image",
    "save_image",
    "save_panel",
]

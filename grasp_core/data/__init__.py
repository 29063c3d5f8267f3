"""Domain data: the on-disk layout, the embedded drift benchmark, in-memory loaders."""

from grasp_core.data.layout import SPLITS, Split, check_layout, class_names, input_shape, list_domains, read_split
from grasp_core.data.loaders import Batch, Batches, DomainData, load_domain, subsample
from grasp_core.data.preprocess import decode_image, load_images, to_batch

__all__ = ["SPLITS", "Batch", "Batches", "DomainData", "Split", "check_layout", "class_names", "decode_image",
           "input_shape", "list_domains", "load_domain", "load_images", "read_split", "subsample", "to_batch"]

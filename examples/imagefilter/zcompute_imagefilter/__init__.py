"""A zcompute plugin: tile an image with a halo, convolve the tiles on the providers, stitch the result."""

from zcompute_imagefilter.task import EDGE_MODES, ImageFilterTask, convolve, filter_image

__all__ = ["EDGE_MODES", "ImageFilterTask", "convolve", "filter_image"]

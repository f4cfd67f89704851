"""lrc_fast: Localized Region Contrast pre-training for CT segmentation, on the GPU.

Superpixels (:func:`felzenszwalb`), elastic positive pairs (:func:`elastic_pair`) and the region
contrast loss (:func:`region_contrast_loss`), each with a fast GPU path and a CPU reference;
CT reading and the synthetic phantom live in :mod:`lrc_fast.data`.
"""
from ._ext import backends
from .elastic import elastic_pair, elastic_warp, random_elastic_field
from .loss import RegionContrastLoss, region_contrast_loss, region_sample_mean
from .superpixels import felzenszwalb

__version__ = "0.1.0"

__all__ = [
    "backends",
    "data",
    "elastic_pair",
    "elastic_warp",
    "felzenszwalb",
    "random_elastic_field",
    "region_contrast_loss",
    "RegionContrastLoss",
    "region_sample_mean",
    "__version__",
]


def __getattr__(name):
    # lrc_fast.data needs SimpleITK; import it on first use so the GPU ops work without it.
    if name == "data":
        import importlib

        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module 'lrc_fast' has no attribute {name!r}")

"""NYU-v2 (mtan release): TFDS builder `mtpsl_nyuv2` (`nyuv2.py`) and DatasetSpec (`spec.py`).

The builder's names are imported on first access (`from mtpsl_datasets.nyuv2 import
MtpslNyuv2`), which registers it with TFDS; importing the package alone does not.
"""
from mtpsl_datasets import _lazy

__all__ = ["MtpslNyuv2", "NUM_CLASSES", "RELEASE_COUNTS", "load_example", "validate_manual_dir"]
__getattr__, __dir__ = _lazy.exports(__name__, "mtpsl_datasets.nyuv2.nyuv2", __all__)

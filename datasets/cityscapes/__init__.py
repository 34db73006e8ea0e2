"""Cityscapes (mtan releases): TFDS builder `mtpsl_cityscapes` (`cityscapes.py`) and
DatasetSpec (`spec.py`). Builder names are imported (registered with TFDS) on first access."""
from mtpsl_datasets import _lazy

__all__ = ["CityscapesConfig", "MtpslCityscapes", "RELEASE_COUNTS", "load_example",
           "release_configs", "validate_manual_dir"]
__getattr__, __dir__ = _lazy.exports(__name__, "mtpsl_datasets.cityscapes.cityscapes", __all__)

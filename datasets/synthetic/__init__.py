"""Synthetic indoor scenes: renderer (`render.py`), TFDS builder `mtpsl_synthetic`
(`synthetic_dataset_builder.py`) and DatasetSpec (`spec.py`).

The builder's names are imported on first access (`from mtpsl_datasets.synthetic import
MtpslSynthetic`), which registers it with TFDS; nothing is downloaded or written until
`download_and_prepare()` is called.
"""
from mtpsl_datasets import _lazy

__all__ = ["MtpslSynthetic", "SyntheticConfig"]
__getattr__, __dir__ = _lazy.exports(
    __name__, "mtpsl_datasets.synthetic.synthetic_dataset_builder", __all__)

"""PASCAL-Context (PASCAL_MT): TFDS builder `mtpsl_pascal_context` (`pascal_context.py`) and
DatasetSpec (`spec.py`). Builder names are imported (registered with TFDS) on first access."""
from mtpsl_datasets import _lazy

__all__ = ["MtpslPascalContext", "RELEASE_COUNTS", "TASKS", "load_example", "read_split",
           "validate_manual_dir"]
__getattr__, __dir__ = _lazy.exports(
    __name__, "mtpsl_datasets.pascal_context.pascal_context", __all__)

"""NYU-v2 (mtan release) TFDS builder `mtpsl_nyuv2`; importing registers it with TFDS."""
from mtpsl_datasets.nyuv2.nyuv2 import (
    MtpslNyuv2,
    NUM_CLASSES,
    RELEASE_COUNTS,
    load_example,
    validate_manual_dir,
)

__all__ = ["MtpslNyuv2", "NUM_CLASSES", "RELEASE_COUNTS", "load_example", "validate_manual_dir"]

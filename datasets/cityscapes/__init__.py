"""Cityscapes (mtan releases) TFDS builder `mtpsl_cityscapes`; importing registers it."""
from mtpsl_datasets.cityscapes.cityscapes import (
    CityscapesConfig,
    MtpslCityscapes,
    RELEASE_COUNTS,
    load_example,
    release_configs,
    validate_manual_dir,
)

__all__ = ["CityscapesConfig", "MtpslCityscapes", "RELEASE_COUNTS", "load_example",
           "release_configs", "validate_manual_dir"]

"""PASCAL-Context (PASCAL_MT) TFDS builder `mtpsl_pascal_context`; importing registers it."""
from mtpsl_datasets.pascal_context.pascal_context import (
    MtpslPascalContext,
    RELEASE_COUNTS,
    TASKS,
    load_example,
    read_split,
    validate_manual_dir,
)

__all__ = ["MtpslPascalContext", "RELEASE_COUNTS", "TASKS", "load_example", "read_split",
           "validate_manual_dir"]

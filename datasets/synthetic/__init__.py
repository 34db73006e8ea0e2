"""TFDS builder `mtpsl_synthetic`: procedural indoor scenes rendered by `mtpsl_tf.data.synthetic`.

Importing this package registers the builder with TFDS (that is how TFDS builders work);
nothing is downloaded or written until `download_and_prepare()` is called.
"""

from mtpsl_datasets.synthetic.synthetic_dataset_builder import MtpslSynthetic, SyntheticConfig

__all__ = ["MtpslSynthetic", "SyntheticConfig"]

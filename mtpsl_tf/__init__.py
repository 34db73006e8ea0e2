"""mtpsl_tf: multi-task partially-supervised dense prediction in TensorFlow / Keras 3.

Importing the package has no side effects (no TF device setup, no dataset
registration); submodules are imported on demand.
"""

__version__ = "0.1.0"

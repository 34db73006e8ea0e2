"""Package layout only; metadata and dependencies live in setup.cfg.

`datasets/` (TFDS builders) and `export/` are installed under the import names
`mtpsl_datasets` and `mtpsl_export`, so the top-level folder `datasets` never
shadows the Hugging Face `datasets` package.
"""
from setuptools import find_packages, setup


def _renamed(folder, name):
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(
    packages=find_packages(include=["mtpsl_tf", "mtpsl_tf.*"])
    + _renamed("datasets", "mtpsl_datasets")
    + _renamed("export", "mtpsl_export"),
    package_dir={"mtpsl_datasets": "datasets", "mtpsl_export": "export"},
)

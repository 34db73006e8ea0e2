"""Augmentation policies, one module each, registered in AUGMENTATIONS (data/registry.py)."""

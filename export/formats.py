"""Export formats by name (no TensorFlow import: flags are checked before it loads)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Format:
    """An export format.

    Attributes:
        name: the `--formats` value.
        filename: file (or directory) name inside the export directory.
        precision: "float32", "float16" or "int8": float32 formats must match Keras to the
            strict tolerance; the others are judged by their metric degradation.
        tflite: True for LiteRT flatbuffers.
    """

    name: str
    filename: str
    precision: str
    tflite: bool


FORMATS = {f.name: f for f in (
    Format("saved_model", "saved_model", "float32", False),
    Format("tflite", "model_float32.tflite", "float32", True),
    Format("tflite_fp16", "model_float16.tflite", "float16", True),
    Format("tflite_int8", "model_int8.tflite", "int8", True),
)}


def parse_formats(value) -> list:
    """"a,b" or a sequence -> [Format]; raises ValueError naming an unknown format."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not names:
        raise ValueError(f"no export format given; expected some of: {', '.join(FORMATS)}")
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; expected one of: {', '.join(FORMATS)}")
    return [FORMATS[n] for n in dict.fromkeys(names)]

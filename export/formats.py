"""Export formats by name (no TensorFlow import: flags are checked before it loads)."""

from __future__ import annotations

import dataclasses

from mtpsl_tf.registry import Registry


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


FORMATS: Registry = Registry("export format")


def register(fmt: Format) -> Format:
    """Adds `fmt` to FORMATS under its name (one call per format)."""
    return FORMATS.register(fmt.name)(fmt)


register(Format("saved_model", "saved_model", "float32", False))
register(Format("tflite", "model_float32.tflite", "float32", True))
register(Format("tflite_fp16", "model_float16.tflite", "float16", True))
register(Format("tflite_int8", "model_int8.tflite", "int8", True))


def parse_formats(value) -> list:
    """"a,b" or a sequence -> [Format]; raises ValueError naming an unknown format."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not names:
        raise ValueError(f"no export format given; expected some of: {', '.join(FORMATS)}")
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; expected one of: {', '.join(FORMATS)}")
    return [FORMATS.get(n) for n in dict.fromkeys(names)]

"""Model card (`model_card.json` + `model_card.md`) written next to an export."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from mtpsl_export import contract


def class_names(dataset: str, num_classes: int) -> Optional[List[str]]:
    """Names of the semantic classes when known for (dataset, class count), else None
    (DatasetSpec.class_names)."""
    from mtpsl_tf.data.registry import DATASETS

    names = DATASETS.get(dataset).class_names.get(num_classes) if dataset in DATASETS else None
    return list(names) if names else None


def input_contract(height: int, width: int) -> Dict[str, object]:
    return {
        "name": "image", "layout": "NHWC", "shape": ["N", height, width, 3], "channels": "RGB",
        "dtype": "float32", "range": [0.0, 1.0],
        "uint8_signature": "SavedModel `serving_uint8`: uint8 in [0, 255], divided by 255 inside",
        "tflite": f"batch fixed to 1: [1, {height}, {width}, 3] float32 in [0, 1] (also for int8: "
                  "quantised inside the model)",
        "resize": "resize other images to this size (bilinear) before calling",
    }


def build(config, tasks: Sequence, height: int, width: int, checkpoint: str, report: dict,
          training_metrics: Optional[dict]) -> Dict[str, object]:
    """The card as a JSON-able dict."""
    tasks_info = []
    for task in tasks:
        entry = {"name": task.name, "kind": "classification" if contract.is_classification(task) else "regression",
                 "channels": task.channels, "activation": task.activation, "primary_metric": task.primary_metric}
        if contract.is_classification(task):
            names = class_names(config.data.dataset, task.channels)
            entry["class_names"] = names if names else f"{task.channels} classes"
        tasks_info.append(entry)
    formats = report["formats"]
    return {
        "model": f"{config.model.backbone} ({config.model.variant}"
                 + (f", filters {config.model.filters}" if config.model.filters else "") + ")",
        "paper": "Learning Multiple Dense Prediction Tasks from Partially Annotated Data (Li, Liu, Bilen, CVPR 2022)",
        "dataset": config.data.dataset, "dataset_config": config.data.dataset_config or "default",
        "setting": config.data.setting, "method": config.method.method, "checkpoint": checkpoint,
        "tasks": tasks_info,
        "input": input_contract(height, width),
        "outputs": contract.output_spec(tasks, height, width),
        "files": {name: f["file"] for name, f in formats.items()},
        "training_metrics": training_metrics,
        "verification": {
            "examples": report["num_verify"], "source": report["verify_source"],
            "int8_calibration": (f"{report['num_calibration']} images: {report['calibration_source']}"
                                 if report.get("calibration_source") else None),
            "keras_metrics": report["keras"]["metrics"],
            "format_metrics": {name: f["metrics"] for name, f in formats.items()},
        },
    }


def write(card: Dict[str, object], out_dir: str) -> None:
    with open(os.path.join(out_dir, "model_card.json"), "w") as f:
        json.dump(card, f, indent=2)
    with open(os.path.join(out_dir, "model_card.md"), "w") as f:
        f.write(markdown(card))


def markdown(card: Dict[str, object]) -> str:
    lines = [f"# Model card: {card['model']}", "",
             f"- Method: `{card['method']}` ({card['paper']})",
             f"- Dataset: `{card['dataset']}` (config `{card['dataset_config']}`), label setting `{card['setting']}`",
             f"- Checkpoint: `{card['checkpoint']}`", "", "## Input", ""]
    for key, value in card["input"].items():
        lines.append(f"- {key}: {value}")
    lines += ["", "## Outputs", "", "| name | dtype | shape | meaning |", "| --- | --- | --- | --- |"]
    for name, spec in card["outputs"].items():
        lines.append(f"| `{name}` | {spec['dtype']} | {spec['shape']} | {spec['meaning']} |")
    lines += ["", "## Tasks", ""]
    for task in card["tasks"]:
        extra = f"; classes: {task['class_names']}" if "class_names" in task else ""
        lines.append(f"- `{task['name']}`: {task['kind']}, {task['channels']} channel(s), "
                     f"primary metric `{task['primary_metric']}`{extra}")
    lines += ["", "## Files", ""] + [f"- {name}: `{path}`" for name, path in card["files"].items()]
    if card["training_metrics"]:
        lines += ["", "## Training-time test metrics (metrics.json)", "", "```",
                  json.dumps(card["training_metrics"], indent=1), "```"]
    v = card["verification"]
    lines += ["", "## Verification", "", f"- Every format compared with the Keras model on {v['examples']} "
              f"images: {v['source']}"]
    if v["int8_calibration"]:
        lines.append(f"- int8 calibrated on {v['int8_calibration']}")
    keys = list(v["keras_metrics"])
    if not keys:
        lines.append("- No task metrics: the dataset was not available to the export")
        return "\n".join(lines) + "\n"
    lines += ["", f"## Metrics on the {v['examples']} verification examples", "",
              "| metric | keras | " + " | ".join(v["format_metrics"]) + " |",
              "| --- " * (len(v["format_metrics"]) + 2) + "|"]
    for key in keys:
        row = [f"{v['keras_metrics'][key]:.4f}"] + [f"{m[key]:.4f}" for m in v["format_metrics"].values()]
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"

"""The model card of a run's model (``model/README.md``), in the Hugging Face hub's format.

A YAML front matter with the ``model-index`` block the hub reads (task, dataset, metrics),
then what the model is, the teacher it was distilled from (path, family, AP), the
distillation settings, the data, the metrics with the area ranges used, how to run it and
the command that made it. Written for every run, teacher and student.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import yaml

from detrdistill.config import RunConfig, config_to_dict
from detrdistill.evaluate import AP_KEYS

COCO_AREA_RANGES = {"small": [0, 32**2], "medium": [32**2, 96**2], "large": [96**2, 1e10]}
FAMILY_NAMES = {"detr": "DETR", "conditional_detr": "Conditional DETR", "deformable_detr": "Deformable DETR",
                "adamixer": "AdaMixer", "rt_detr": "RT-DETR", "rt_detr_v2": "RT-DETRv2", "d_fine": "D-FINE"}


def _teacher_facts(teacher: str | None) -> dict | None:
    """Path, family and AP of the teacher model directory (its run's eval.json when beside it)."""
    if teacher is None:
        return None
    model_dir = Path(teacher)
    config_file = model_dir / "config.json"
    family = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    eval_file = model_dir.parent / "eval.json"
    evaluation = json.loads(eval_file.read_text()) if eval_file.is_file() else {}
    return {"path": str(model_dir), "family": family, "AP": evaluation.get("AP"), "split": evaluation.get("split")}


def model_card(name: str, config: RunConfig, metrics: dict, data_dir: Path, num_images: dict[str, int],
               class_names: list[str], area_ranges: dict | None, has_processor: bool, command: str) -> str:
    """The card's text. ``metrics``: eval.json's AP keys (fractions); ``num_images``: per split."""
    family = config.model.family
    teacher = _teacher_facts(config.distill.teacher)
    dataset = Path(data_dir).name
    values = {key: metrics.get(key) for key in AP_KEYS}
    front = {
        "library_name": "transformers" if has_processor else "detrdistill",
        "pipeline_tag": "object-detection",
        "tags": ["object-detection", family, "detrdistill"] + (["knowledge-distillation"] if teacher else []),
        "datasets": [dataset],
        "model-index": [{"name": name, "results": [{
            "task": {"type": "object-detection", "name": "Object Detection"},
            "dataset": {"type": dataset, "name": dataset, "split": config.data.val_split},
            "metrics": [{"type": "mAP" if key == "AP" else key, "name": key, "value": round(100 * value, 2)}
                        for key, value in values.items() if value is not None and value == value],
        }]}],
    }
    ranges = area_ranges or COCO_AREA_RANGES
    area_text = ", ".join(f"{k} [{v[0]:g}, {v[1]:g})" for k, v in ranges.items())
    what = f"A {FAMILY_NAMES.get(family, family)} detector trained with detrdistill"
    what += (f", distilled with DETRDistill from a {FAMILY_NAMES.get(teacher['family'], teacher['family'])} teacher."
             if teacher else ", without a teacher.")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", "", what, ""]
    if teacher:
        teacher_ap = "unknown" if teacher["AP"] is None else f"{100 * teacher['AP']:.1f}"
        lines += ["## Teacher", "", f"- path: `{teacher['path']}`", f"- family: {teacher['family']}",
                  f"- AP on its run's `{teacher['split'] or '?'}` split: {teacher_ap}", "",
                  "## Distillation settings", "",
                  "```yaml", yaml.safe_dump({"distill": {k: v for k, v in config_to_dict(config)["distill"].items()
                                                         if k != "teacher"}}, sort_keys=False).strip(), "```", ""]
    lines += ["## Data", "", f"- dataset: `{data_dir}`",
              f"- trained on `{config.data.train_split}` ({num_images.get('train', '?')} images), evaluated on "
              f"`{config.data.val_split}` ({num_images.get('val', '?')} images)",
              f"- {len(class_names)} classes: {', '.join(class_names)}",
              f"- images: shorter side {config.data.image_size} px"
              + (f", longer side at most {config.data.max_size} px" if config.data.max_size else ""), "",
              "## Metrics", "", f"COCO box AP (pycocotools) on `{config.data.val_split}`, x100. Area ranges "
              "(pixels^2, at the original image size): " + area_text + ".", "",
              "| " + " | ".join(AP_KEYS) + " |", "|" + "---:|" * len(AP_KEYS),
              "| " + " | ".join("-" if v is None or v != v else f"{100 * v:.1f}" for v in values.values()) + " |", "",
              "## Use", ""]
    if has_processor:
        lines += ["```python", "from transformers import pipeline", "",
                  'detector = pipeline("object-detection", model="PATH/TO/THIS/FOLDER")',
                  'detector("image.jpg", threshold=0.5)', "```", "",
                  "or `detrdistill predict PATH/TO/THIS/FOLDER IMAGES... --out results/`.", ""]
    else:
        lines += [f"{FAMILY_NAMES.get(family, family)} is detrdistill's own model: transformers' `pipeline` and "
                  "`AutoModelForObjectDetection` do not know it. Load it with "
                  "`detrdistill.models.build.load_detector(PATH)` or run `detrdistill predict PATH IMAGES...`.", ""]
    lines += ["## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def card_name(out_dir: Path) -> str:
    """The run's name: its directory, with the parent's for a seed directory (``all/seed0`` -> ``all-seed0``)."""
    out_dir = Path(out_dir)
    return f"{out_dir.parent.name}-{out_dir.name}" if re.fullmatch(r"seed\d+", out_dir.name) else out_dir.name


def current_command() -> str:
    """This process's command line as a shell would read it."""
    program = "detrdistill" if Path(sys.argv[0]).name in ("detrdistill", "cli.py", "__main__.py") else sys.argv[0]
    return " ".join(shlex.quote(part) for part in [program, *sys.argv[1:]])

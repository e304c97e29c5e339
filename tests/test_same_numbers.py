"""A refactor must not change what training computes: tiny runs trained now against the
per-step losses and final weights recorded before (``tests/data/reference_runs.json``).

On a CPU of the recorded kind (``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512)
the weights are compared to the bit (their digest) and every logged loss term to 1e-6
relative, since a term split into named parts sums in another order (same gradients). On
another instruction set the same code rounds differently (AVX2 against AVX512: losses 3e-5
apart by step 4, where Adam turns near-zero gradients of flipped sign into whole steps), so
there the losses are compared to 1e-4 and the weights' sums to 1e-3.
Regenerate only for a change meant to change the numbers, and say so in its commit:

    python -m tests.test_same_numbers --write
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detrdistill.config import config_to_dict
from detrdistill.data.shapes import make_shapes
from detrdistill.models.build import resolve_model_dir
from detrdistill.overrides import apply_overrides
from detrdistill.runs import model_digest
from detrdistill.training.run import run_training
from tests.conftest import IMAGE_SIZE, make_tiny_run_config

REFERENCE = Path(__file__).parent / "data" / "reference_runs.json"
ALL_THREE = {"distill.logits.enabled": True, "distill.features.enabled": True, "distill.assignment.enabled": True}
# (run, family, overrides); "teacher" first: the others distill from it.
RUNS = (
    ("teacher", "deformable_detr", {}),
    ("detrdistill_conditional", "conditional_detr", ALL_THREE),
    ("detrdistill_deformable_paper_mask", "deformable_detr", {**ALL_THREE, "distill.features.mask": "paper"}),
    ("fgd_conditional", "conditional_detr", {"distill.logits.enabled": False, "distill.features.enabled": False,
                                             "distill.assignment.enabled": False, "distill.baseline.method": "fgd"}),
)


NOT_LOSSES = ("step", "lr", "step_ms", "elapsed_s", "grad_total_norm")


def weight_sums(run_dir: Path) -> dict[str, float]:
    """Sums over every weight of a trained run's model, in float64: {"sum", "abs_sum", "square_sum"}."""
    tensors = [t.double() for path in sorted(resolve_model_dir(run_dir).glob("*.safetensors"))
               for t in load_file(path).values() if t.is_floating_point()]
    return {"sum": sum(float(t.sum()) for t in tensors), "abs_sum": sum(float(t.abs().sum()) for t in tensors),
            "square_sum": sum(float((t * t).sum()) for t in tensors)}


def train_runs(work: Path) -> dict:
    """{run: {"digest", "weights": weight sums, "losses": [per-step logged terms], "config"}}, trained
    on one thread, and "cpu": the instruction set they were computed with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split by thread count round differently
    try:
        data = make_shapes(work / "data", num_train=12, num_val=4, seed=0, image_size=IMAGE_SIZE, progress=False)
        found = {"cpu": torch.backends.cpu.get_cpu_capability()}
        for name, family, overrides in RUNS:
            config = apply_overrides(make_tiny_run_config(family, steps=4), overrides)
            teacher = None if name == "teacher" else work / "teacher"
            run_training(config, data, work / name, teacher=teacher, progress=False)
            lines = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
            losses = [{k: v for k, v in line.items() if k not in NOT_LOSSES} for line in lines if "loss" in line]
            found[name] = {"digest": model_digest(work / name), "weights": weight_sums(work / name), "losses": losses,
                           "config": config_to_dict(config)["distill"]}
        return found
    finally:
        torch.set_num_threads(threads)


def test_training_computes_the_recorded_numbers(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    found = train_runs(tmp_path)
    same_cpu = found.pop("cpu") == reference["cpu"]
    tolerance, weight_tolerance = (1e-6, 1e-6) if same_cpu else (1e-4, 1e-3)
    for name, run in found.items():
        recorded = reference[name]
        assert len(run["losses"]) == len(recorded["losses"]) == 4, name
        for step, (now, before) in enumerate(zip(run["losses"], recorded["losses"], strict=True), start=1):
            assert now["loss"] == pytest.approx(before["loss"], rel=tolerance), f"{name} step {step}"
            # Terms named before keep their values; a term split into parts sums to the old one.
            for key, value in before.items():
                parts = [v for k, v in now.items() if k == key or k.startswith(key + "_")]
                assert parts, f"{name} step {step}: term {key} is gone"
                assert sum(parts) == pytest.approx(value, rel=tolerance, abs=1e-9), f"{name} step {step}: {key}"
        for key, value in recorded["weights"].items():
            assert run["weights"][key] == pytest.approx(value, rel=weight_tolerance), f"{name}: weights changed ({key})"
        if same_cpu:
            assert run["digest"] == recorded["digest"], f"{name}: the trained weights changed (to the bit)"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(train_runs(Path(work)), indent=1) + "\n")
    print(f"wrote {REFERENCE}")

"""Each piece of the machinery is defined once: a second copy (the way the three train-or-reuse
functions and the drifting val datasets came about) fails here, in the package, the
benchmark scripts and the notebooks' code cells alike."""

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]

# Function name -> the one file that may define it.
DEFINED_ONCE = {
    "train_or_reuse": "detrdistill/runs.py",
    "is_finished": "detrdistill/runs.py",
    "ensure_shapes": "detrdistill/runs.py",
    "load_run": "detrdistill/runs.py",
    "model_digest": "detrdistill/runs.py",
    "runs_table": "detrdistill/runs.py",
    "interleaved_ms": "detrdistill/bench/timing.py",
    "from_config": "detrdistill/matching.py",
    "apply_overrides": "detrdistill/overrides.py",
    "build_summary": "detrdistill/bench/summary.py",
    "render_markdown": "detrdistill/bench/render.py",
    "runs_instability": "detrdistill/analysis/instability.py",
    "shape_table": "detrdistill/models/record.py",
}
# Constructions that belong to one file: everyone else calls that file's function.
BUILT_ONCE = {
    # Matchers come from HungarianMatcher.from_config, not from LossConfig unpacked by position.
    r"\bHungarianMatcher\(": "detrdistill/matching.py",
    # The family -> (teacher preset, student preset) tables.
    r"\bFamilyPresets\(": "detrdistill/config.py",
    # A split for evaluation (deterministic transforms): prepare.eval_dataset, via runs.eval_dataset.
    r"CocoDetection\([^)]*build_transforms\(\s*False": "detrdistill/training/prepare.py",
}


def sources() -> dict[str, str]:
    """{relative path: Python source} of the package, the benchmark scripts and the notebooks'
    code cells (one source per notebook, its cells joined; IPython magics dropped)."""
    found = {str(p.relative_to(ROOT)): p.read_text() for folder in ("detrdistill", "benchmarks")
             for p in sorted((ROOT / folder).rglob("*.py"))}
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        code = "\n".join("".join(c["source"]) for c in cells)
        found[str(notebook.relative_to(ROOT))] = "\n".join(
            line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    return found


def definitions(source: str) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def test_every_source_parses_and_the_owners_define_their_functions():
    found = sources()
    assert any(path.endswith(".ipynb") for path in found)
    for path, source in found.items():
        ast.parse(source, filename=path)
    for name, owner in DEFINED_ONCE.items():
        assert name in definitions(found[owner]), f"{owner} no longer defines {name}: update DEFINED_ONCE"


def test_each_listed_function_is_defined_once():
    seconds = [f"{path} defines {name} (the one definition is in {DEFINED_ONCE[name]})"
               for path, source in sources().items() for name in definitions(source) & DEFINED_ONCE.keys()
               if path != DEFINED_ONCE[name]]
    assert seconds == []


def test_each_listed_thing_is_built_in_one_place():
    seconds = [f"{path} matches {pattern} (only {owner} may)"
               for path, source in sources().items() for pattern, owner in BUILT_ONCE.items()
               if path != owner and re.search(pattern, source)]
    assert seconds == []


def test_the_check_finds_a_second_definition():
    copied = "def train_or_reuse(config, data_dir, run_dir):\n    pass\n"
    assert "train_or_reuse" in definitions(copied)
    matcher, presets, val_set = BUILT_ONCE
    assert re.search(matcher, "HungarianMatcher(loss.class_cost, loss.bbox_cost, loss.giou_cost)")
    assert re.search(presets, 'TABLE = {"detr": FamilyPresets("a_teacher", "a_student")}')
    assert re.search(val_set, "CocoDetection(root, split,\n    transforms=build_transforms(\n        False, 128))")
    assert not re.search(val_set, "CocoDetection(root, split, transforms=build_transforms(True, 128, None))")

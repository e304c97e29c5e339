"""``detrdistill`` command line: make-shapes, carve-split, pretrain-backbone, train, distill, eval, demo,
predict, notebooks, figures, diagnose, bench, show-config."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from detrdistill.bench.suites import SUITES as BENCH_SUITES
from detrdistill.config import ConfigError, load_config, save_config
from detrdistill.data.errors import DatasetError
from detrdistill.training.checkpoint import CheckpointError


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, output, budget, seed and resume options shared by ``train`` and ``distill``."""
    _add_data(parser)
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps (default: the config's train.steps)")
    budget.add_argument("--minutes", type=float, help="wall-clock training budget instead of a step count")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--backbone-cache", type=Path, help="cache directory (default: DATA/backbones)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="set a config field, e.g. --set distill.features.mask=paper (YAML value; repeatable)")
    parser.set_defaults(func=cmd_run)


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="COCO-format dataset directory")
    parser.add_argument("--train-split", help="annotation split for training (default: train)")
    parser.add_argument("--val-split", help="annotation split for evaluation (default: val)")


def parse_set_options(options: list[str]) -> dict:
    """``["a.b=1", "c.d=paper"]`` -> ``{"a.b": 1, "c.d": "paper"}``, each value read as YAML."""
    import yaml

    overrides = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals or not key:
            raise ConfigError(f"--set {option!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _config_with_overrides(args):
    """The run config: ``--config``, then ``--set`` options, then the budget, seed and split
    flags, all through the config's own checks (types, budgets) before anything is written."""
    from detrdistill.overrides import apply_overrides

    config = load_config(args.config)
    overrides = parse_set_options(getattr(args, "overrides", None) or [])
    if getattr(args, "steps", None) is not None:
        overrides.update({"train.steps": args.steps, "train.minutes": None})
    if getattr(args, "minutes", None) is not None:
        overrides.update({"train.steps": None, "train.minutes": args.minutes})
    if getattr(args, "seed", None) is not None:
        overrides["train.seed"] = args.seed
    if getattr(args, "train_split", None):
        overrides["data.train_split"] = args.train_split
    if getattr(args, "val_split", None):
        overrides["data.val_split"] = args.val_split
    return apply_overrides(config, overrides, where="command line") if overrides else config


def cmd_make_shapes(args) -> None:
    from detrdistill.data.shapes import make_shapes

    out = make_shapes(args.out, num_train=args.train, num_val=args.val, seed=args.seed, image_size=args.image_size)
    print(f"wrote {out}")


def cmd_carve_split(args) -> None:
    from detrdistill.data.splits import carve_split

    rest, held_out = carve_split(args.data, args.source, args.count, args.seed, tuple(args.names))
    print(f"wrote splits {rest!r} and {held_out!r} of {args.data} (from {args.source!r}, {args.count} held out)")


def cmd_pretrain_backbone(args) -> None:
    import torch

    from detrdistill.data.coco import CocoDetection
    from detrdistill.models.backbone_pretraining import cached_backbone
    from detrdistill.training.prepare import default_backbone_cache

    config = _config_with_overrides(args)
    dataset = CocoDetection(args.data, config.data.train_split, transforms=None)
    cache = args.backbone_cache or default_backbone_cache(args.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, stats, path = cached_backbone(
        dataset, config.model.backbone, config.backbone_pretraining, cache, config.train.seed, device=device
    )
    print(f"backbone: {path}  (crop val accuracy {stats['val_accuracy']:.3f} over {stats['num_crops']} crops)")


def cmd_run(args) -> None:
    """``train``, or ``distill`` when a teacher is given."""
    from detrdistill.distributed import end_processes, is_main_process
    from detrdistill.evaluate import format_ap_table
    from detrdistill.training.run import run_training

    result = run_training(_config_with_overrides(args), args.data, args.out, teacher=getattr(args, "teacher", None),
                          resume=args.resume, backbone_cache=args.backbone_cache)
    if is_main_process():  # one table from a multi-process launch, not one per process
        print(format_ap_table({args.out.name: result}))
    end_processes()


def cmd_eval(args) -> None:
    from detrdistill.config import RunConfig
    from detrdistill.evaluate import format_ap_table
    from detrdistill.inference import evaluate_model, load_for_dataset
    from detrdistill.training.prepare import check_not_empty, eval_dataset

    path = args.run_or_model
    run_config = path / "config.yaml"
    config = load_config(run_config) if run_config.is_file() else RunConfig()
    overrides = parse_set_options(args.overrides)
    if args.image_size:
        overrides["data.image_size"] = args.image_size
    if overrides:
        from detrdistill.overrides import apply_overrides

        config = apply_overrides(config, overrides, where="command line")
    dataset = eval_dataset(args.data, config.data, args.split)
    check_not_empty(dataset, "val", needs_boxes=True)
    metrics = evaluate_model(load_for_dataset(path, dataset), dataset, args.batch_size)
    out = args.out or (path / f"eval_{args.split}.json")
    out.write_text(json.dumps({**metrics, "split": args.split, "data": str(args.data)}, indent=2))
    print(format_ap_table({path.name: metrics}))
    print(f"wrote {out}")


def cmd_predict(args) -> None:
    from detrdistill.predict import run_predict

    written = run_predict(args.model, args.images, args.out, threshold=args.threshold, draw=args.draw,
                          draw_threshold=args.draw_threshold, batch_size=args.batch_size)
    drawn = f" and {args.out / 'drawn'}/" if args.draw else ""
    print(f"wrote {written} and {written.parent / 'images.json'}{drawn}")


def cmd_notebooks(args) -> None:
    from detrdistill.notebook_run import execute_notebooks

    lines = execute_notebooks(sorted(args.notebooks), Path.cwd(), timeout_s=args.cell_timeout)
    print("\n".join(lines))
    if any("FAILED" in line or "not kept" in line for line in lines):
        raise SystemExit(1)


def cmd_demo(args) -> None:
    from detrdistill.demo import run_demo

    run_demo(args.data, args.out)


def cmd_figures(args) -> None:
    from detrdistill.analysis.figures import draw_figures, make_adamixer_figures, write_figures

    if (args.teacher is None) != (args.student is None) or (args.teacher is None and args.adamixer is None):
        raise ConfigError("figures: give --teacher and --student (the DETRDistill figures), --adamixer RUN "
                          "(the AdaMixer figures), or both")
    written = {}
    if args.teacher is not None:
        drawn = draw_figures(args.data, args.teacher, args.student, distilled=args.distilled,
                             epoch_run=args.epoch_run, ad_run=args.ad_run, num_images=args.images,
                             is_images=args.is_images, split=args.split, device=args.device)
        written |= write_figures(drawn, args.out)
    if args.adamixer is not None:
        written |= make_adamixer_figures(args.data, args.adamixer, args.out, num_images=args.images,
                                         split=args.split)
    for path in written.values():
        print(f"wrote {path}")


def cmd_diagnose(args) -> None:
    from detrdistill.analysis.gradients import format_summary, gradient_lines, plot_gradients, summarise

    lines = gradient_lines(args.run)
    eval_file = args.run / "eval.json"
    step_ms = json.loads(eval_file.read_text()).get("step_ms") if eval_file.is_file() else None
    print(format_summary(summarise(lines), step_ms))
    out = args.out or (args.run / "gradients.png")
    plot_gradients(lines, title=f"per-term gradients: {args.run}").savefig(out, dpi=110)
    print(f"wrote {out}")


def cmd_bench(args) -> None:
    from detrdistill.bench.runner import COST_SCRIPT, run_suite
    from detrdistill.bench.suites import SUITES
    from detrdistill.runs import ensure_shapes

    if args.suite == "cost":  # the lead's cost benchmark: per-step time and memory ratios
        if not COST_SCRIPT.is_file():
            raise FileNotFoundError(f"{COST_SCRIPT} not found: `bench cost` runs from a source checkout")
        subprocess.run([sys.executable, str(COST_SCRIPT), "--data", str(args.data)], check=True)
        return
    if not args.data.exists():
        ensure_shapes(args.data)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    run_suite(SUITES[args.suite], args.data, args.runs, args.results, seeds=seeds, quick=args.quick,
              families=args.families, teachers=args.teachers, report_only=args.report_only,
              resamples=args.resamples, rows=args.rows, settings=parse_set_options(args.overrides),
              commit=args.commit)


def cmd_show_config(args) -> None:
    config = load_config(args.config)
    out = Path("/dev/stdout") if args.out is None else args.out
    save_config(config, out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detrdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-shapes", help="generate the embedded synthetic shapes dataset (COCO layout)")
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=4000, help="training images")
    p.add_argument("--val", type=int, default=1000, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.set_defaults(func=cmd_make_shapes)

    p = sub.add_parser("carve-split", help="hold images out of a training split (minitrain + minival) to choose "
                       "settings on, never on val")
    p.add_argument("data", type=Path, help="COCO-format dataset directory")
    p.add_argument("--source", default="train", help="the split to carve (default: train)")
    p.add_argument("--count", type=int, default=500, help="images held out (default: 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", nargs=2, default=["minitrain", "minival"], metavar=("REST", "HELD_OUT"))
    p.set_defaults(func=cmd_carve_split)

    p = sub.add_parser("pretrain-backbone", help="pretrain (or fetch from cache) a config's ResNet backbone")
    p.add_argument("--config", required=True, help="YAML file or preset name")
    _add_data(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--backbone-cache", type=Path, help="cache directory (default: DATA/backbones)")
    p.set_defaults(func=cmd_pretrain_backbone)

    p = sub.add_parser("train", help="train a detector from a config")
    p.add_argument("--config", required=True, help="YAML file or preset name")
    _add_run_arguments(p)

    p = sub.add_parser("distill", help="train a student with DETRDistill from a trained teacher")
    p.add_argument("--teacher", type=Path, required=True, help="teacher run directory or from_pretrained directory")
    p.add_argument("--config", required=True, help="student YAML file or preset name (its distill: section applies)")
    _add_run_arguments(p)

    p = sub.add_parser("eval", help="COCO AP of a run or model directory")
    p.add_argument("run_or_model", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--image-size", type=int, help="default: the run's config, else 128")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, help="JSON to write (default: RUN/eval_SPLIT.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="change a field of the run's config for this evaluation, e.g. --set data.max_size=1333")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="run a trained detector on images: COCO results JSON (and pictures)")
    p.add_argument("model", type=Path, help="a run directory or any from_pretrained detector directory")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions/)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="keep detections scoring at least this (default 0: all, as COCO AP needs)")
    p.add_argument("--draw", action="store_true", help="also write each image with its boxes to OUT/drawn/")
    p.add_argument("--draw-threshold", type=float, default=0.5, help="score of the boxes drawn (default 0.5)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="data -> teacher -> AP table (what `make demo` runs)")
    p.add_argument("--data", type=Path, default=Path("data/shapes"))
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("notebooks", help="execute notebooks in place at their default (CPU) size, keeping their "
                                         "outputs (what `make notebooks` runs)")
    p.add_argument("notebooks", type=Path, nargs="+", help="the .ipynb files, e.g. notebooks/0*.ipynb")
    p.add_argument("--cell-timeout", type=int, default=3600, help="seconds one cell may run")
    p.set_defaults(func=cmd_notebooks)

    p = sub.add_parser("figures", help="write every analysis figure (Fig. 4, 6, 7 analogs, ...) as PNG")
    p.add_argument("--data", type=Path, required=True, help="COCO-format dataset directory")
    p.add_argument("--teacher", type=Path, help="teacher run directory")
    p.add_argument("--student", type=Path, help="undistilled student run directory")
    p.add_argument("--distilled", type=Path, help="DETRDistill student run directory")
    p.add_argument("--epoch-run", type=Path, help="student after one epoch, no distillation (trained if missing)")
    p.add_argument("--ad-run", type=Path, help="student after one epoch of assignment distillation only "
                   "(trained from --teacher if missing)")
    p.add_argument("--adamixer", type=Path, help="AdaMixer run directory: also write its sampling-point figures "
                   "(Fig. 2 (c) analog); alone, only those")
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.add_argument("--images", type=int, default=3, help="images in the picture figures")
    p.add_argument("--is-images", type=int, default=500, help="val images for the IS metric")
    p.add_argument("--split", help="default: each run's val split")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("diagnose", help="per-term gradient norms and cosines of a run trained with "
                       "train.grad_diagnostic_every > 0: a table and RUN/gradients.png")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--out", type=Path, help="PNG to write (default: RUN/gradients.png)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("bench", help="run a benchmark suite (the paper's tables at CPU scale) and write "
                       "benchmarks/results/SUITE.md, .json and .png")
    p.add_argument("suite", choices=[*BENCH_SUITES, "cost"], help="see detrdistill/bench/suites.py")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 per row (default: 3, with --quick 1)")
    p.add_argument("--quick", action="store_true", help="1 seed, a subset of rows, shorter runs (under 20 min)")
    p.add_argument("--data", type=Path, default=Path("data/shapes"), help="generated here if missing")
    p.add_argument("--runs", type=Path, default=Path("runs/bench"), help="run directories (reused across suites)")
    p.add_argument("--families", nargs="+", help="families to run (default: the suite's)")
    p.add_argument("--rows", nargs="+", metavar="KEY",
                   help="only these rows (variant keys, e.g. student detrdistill; add student_same_time for the "
                        "equal-time student); the page is then named SUITE[_FAMILIES]_ROWS so a partial run never "
                        "overwrites the full suite's")
    p.add_argument("--teachers", type=Path, default=Path("runs/presets"),
                   help="teacher run directories, TEACHERS/<teacher preset> (trained there if missing)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs, train nothing")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the val images")
    p.add_argument("--commit", action="store_true",
                   help="git-commit each run's result files as it finishes, and the page at the end (only those "
                        "files: other changes are left alone), so a change of machine loses no finished run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="set a field of every row's student preset before the row's own overrides, e.g. "
                        "--set distill.features.features=encoder_input (YAML value; repeatable); the page is named "
                        "SUITE..._set-KEY=VALUE")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("show-config", help="print a preset or YAML with every default filled in")
    p.add_argument("config")
    p.add_argument("--out", type=Path)
    p.set_defaults(func=cmd_show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DatasetError, ConfigError, CheckpointError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

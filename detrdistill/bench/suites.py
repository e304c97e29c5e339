"""The benchmark suites as data: the paper's Tables 2-7 at CPU scale on the embedded data.

A suite is a list of variants (rows), each a set of dotted config overrides applied to a
family's student preset (``detrdistill/overrides.py``), trained with or without the family's teacher,
for every seed. The runner (``runner.py``) adds one row to every suite: an undistilled
student trained for the same wall-clock time as the suite's DETRDistill row (``reference``).

Budget arithmetic (2-core dev machine, 2 threads, batch 8; benchmarks/results/distill_cost.md
and step_time.md). Seconds per training step:

    deformable_detr   student 0.115   teacher forward 0.117   one KD component ~0.27
                      two ~0.30       all three 0.34          a feature baseline ~0.25
    conditional_detr  student 0.080   teacher forward 0.078   all three 0.218   baseline ~0.17

plus, per run, ~8 s for the final evaluation on the val split (1000 images), ~7 s to save
its predictions and index them for the bootstrap and ~2.5 s per checkpoint evaluation
(300 images; 4 per run, 12 for the equal-time student): about 30 s per run in all.
The budgets count the families in ``Suite.families``, the default; another family (adamixer,
whose step time was not measured when these were set; it runs at the "*" step count) runs
only when named with ``--families`` and adds its own runs, and a teacher preset not yet
trained in runs/presets adds its training.
Run suites on an otherwise idle machine: the equal-time student's steps come from
measured step times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detrdistill.config import FAMILY_PRESETS, ConfigError, FamilyPresets, resolve_config_path

STUDENT = "student"
SAME_TIME = "student_same_time"
TEACHER = "teacher"  # a target's name for the family's teacher run


# The families a suite can run: its own ``families`` by default, any of FAMILY_PRESETS with --families.


@dataclass(frozen=True)
class Variant:
    """One row of a suite.

    ``overrides`` are dotted config keys set on the student preset; ``distilled`` runs train
    with the family's teacher. ``baseline`` is the key of the row this one's gain is measured
    against (None: it is a baseline). ``paper`` holds the published AP (x100) by family, "*"
    for any family (the ablation tables were measured on one detector). ``quick`` rows make up
    the ``--quick`` subset. ``steps_factor`` multiplies the suite's steps for this row (the
    converged suite's student at 2S); its checkpoints stay at the suite's interval.
    ``families`` limits the row to those families (empty: every family the suite runs).
    """

    key: str
    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    distilled: bool = True
    baseline: str | None = STUDENT
    paper: Mapping[str, float] = field(default_factory=dict)
    quick: bool = False
    steps_factor: int = 1
    families: tuple[str, ...] = ()

    def paper_ap(self, family: str) -> float | None:
        return self.paper.get(family, self.paper.get("*"))

    def runs_for(self, family: str) -> bool:
        return not self.families or family in self.families


@dataclass(frozen=True)
class Target:
    """An acceptance check: every ``winners`` row's mean AP above every ``losers`` row's.

    ``min_gain`` (AP fraction, may be negative) makes it ``gain >= min_gain``; ``max_gain``
    makes it ``gain < max_gain`` instead (a plateau: the longer run gains less than that);
    ``std_multiple`` adds ``gain > std_multiple * std``, the std over seeds of the per-seed
    (paired) gain; ``interval`` adds that the gain's 95 % paired bootstrap interval lies above 0.
    A loser ``TEACHER`` is the family's teacher run (one run, every seed compared with it).
    ``families`` limits the check to those families (empty: every family).
    """

    text: str
    winners: tuple[str, ...]
    losers: tuple[str, ...]
    min_gain: float | None = None
    std_multiple: float = 0.0
    source: str = "issue 4"
    max_gain: float | None = None
    interval: bool = False
    families: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    paper_source: str  # what the paper column holds
    variants: tuple[Variant, ...]
    reference: str  # the DETRDistill row; the equal-time student matches its training time
    steps: Mapping[str, int]  # training steps per family, "*" for the others
    quick_steps: Mapping[str, int]
    families: tuple[str, ...] = ("deformable_detr",)
    checkpoints: int = 4  # evaluations during training: every steps // checkpoints steps
    eval_max_images: int = 300  # images per checkpoint evaluation (the final one uses all)
    # The teacher: the family's teacher preset with these overrides, in TEACHERS/<preset><suffix>.
    teacher_overrides: Mapping[str, Any] = field(default_factory=dict)
    teacher_suffix: str = ""
    quick_teacher_steps: int | None = None  # --quick trains its own shorter teacher (suffix "_quick")
    show_teacher: bool = False
    paper_teacher: Mapping[str, float] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()
    budget: str = ""  # the arithmetic behind ``steps``, printed in the report
    # Teacher steps per family ("*" for the others; empty: the preset's own), in TEACHERS/<preset><suffix>.
    teacher_steps: Mapping[str, int] = field(default_factory=dict)
    equal_time: bool = True  # the runner's equal-time student row
    # Copy each run's AP table beside its record, so a page rebuilds (with intervals) and a
    # finished run is reused on a machine where its run directory is gone.
    keep_ap_tables: bool = False
    # Measure every row's step time interleaved in one process once a family's runs are done
    # (``runner.row_step_times``): the page's cost column and its AP-against-time curves then
    # use steps x those times, not wall clocks that other work on the machine stretched.
    interleaved_times: bool = False

    def variant(self, key: str) -> Variant:
        for variant in self.variants:
            if variant.key == key:
                return variant
        raise KeyError(f"suite {self.name} has no variant {key!r}; it has {[v.key for v in self.variants]}")

    def steps_for(self, family: str, quick: bool) -> int:
        table = self.quick_steps if quick else self.steps
        return table.get(family, table["*"])

    def teacher_steps_for(self, family: str) -> int | None:
        return self.teacher_steps.get(family, self.teacher_steps.get("*"))

    def selected_variants(self, quick: bool) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.quick) if quick else self.variants


def kd(ld: bool = False, fd: bool = False, ad: bool = False, **extra: Any) -> dict[str, Any]:
    """Overrides turning DETRDistill's three components on or off, plus any ``extra`` keys."""
    return {"distill.logits.enabled": ld, "distill.features.enabled": fd, "distill.assignment.enabled": ad, **extra}


def feature_baseline(method: str) -> dict[str, Any]:
    """A comparison method alone (FitNet, MGD, FGD, FGFI): loss term kd_<method>, no DETRDistill terms."""
    return kd(**{"distill.baseline.method": method})


def logits_terms(pos_cls: bool, pos_reg: bool, neg_reg: bool) -> dict[str, Any]:
    return kd(ld=True, **{"distill.logits.pos_cls": pos_cls, "distill.logits.pos_reg": pos_reg,
                          "distill.logits.neg_reg": neg_reg})


DETRDISTILL = kd(True, True, True)
# The AdaMixer ablations (Tables 2, 5, 6, 7) all start from this student (R50, 12 epochs).
ADAMIXER_STUDENT = {"*": 42.3}

MAIN = Suite(
    name="main",
    title="DETRDistill against the undistilled student and feature-KD baselines (paper Table 3)",
    paper_source="Table 3: COCO AP, R101 teacher -> R50 student (Deformable and Conditional DETR 50 epochs, "
                 "AdaMixer 12); FGFI only appears in Table 1 (AdaMixer, 12 epochs)",
    variants=(
        Variant(STUDENT, "student", distilled=False, baseline=None, quick=True,
                paper={"deformable_detr": 44.1, "conditional_detr": 40.7, "adamixer": 42.3}),
        Variant("fitnet", "FitNet", feature_baseline("fitnet"), quick=True,
                paper={"deformable_detr": 44.9, "conditional_detr": 41.0, "adamixer": 42.9}),
        Variant("mgd", "MGD", feature_baseline("mgd"),
                paper={"deformable_detr": 44.0, "conditional_detr": 41.2, "adamixer": 42.3}),
        Variant("fgd", "FGD", feature_baseline("fgd"),
                paper={"deformable_detr": 44.1, "conditional_detr": 40.4, "adamixer": 40.7}),
        Variant("fgfi", "FGFI", feature_baseline("fgfi"), paper={"adamixer": 42.6}),
        Variant("detrdistill", "DETRDistill", DETRDISTILL, quick=True,
                paper={"deformable_detr": 46.6, "conditional_detr": 42.9, "adamixer": 44.7}),
    ),
    reference="detrdistill",
    # Conditional DETR's student leaves its loss plateau late: at 800 steps every row of seed 0
    # sat at 0.6-1.1 AP (student 0.6, DETRDistill 1.1), a comparison of noise; at 2000 the
    # student has 4.0 (benchmarks/results/distill_gain_conditional_detr.md). So conditional runs
    # 2000 steps. Measured wall time, 3 seeds, trained teacher presets: the Deformable half 33 min
    # (2026-11-26, student 66 ms and DETRDistill 134 ms a step), the Conditional half 73 min
    # (3-stage student, 2026-11-26, 43 and 105 ms a step): about 1 h 50 min. At this machine's slow
    # hours the Deformable steps took twice as long (130 and 303 ms), which would make it about
    # 2 h 20 min or more. --quick (deformable, student/FitNet/DETRDistill/same-time, 1 seed):
    # measured 5.4 min (2026-11-26, benchmarks/results/main_quick.md).
    steps={"deformable_detr": 600, "conditional_detr": 2000, "*": 800},
    quick_steps={"*": 500},
    families=("deformable_detr", "conditional_detr"),
    show_teacher=True,
    paper_teacher={"deformable_detr": 45.5, "conditional_detr": 42.4, "adamixer": 43.6},
    targets=(
        Target("DETRDistill - student >= +2.5 AP and above 2 std (std over seeds of the per-seed gain)",
               ("detrdistill",), (STUDENT,), min_gain=0.025, std_multiple=2.0),
        Target("DETRDistill above FitNet, MGD and FGD", ("detrdistill",), ("fitnet", "mgd", "fgd")),
    ),
    budget="deformable 600 steps, conditional 2000 steps per run (measured for 2 families x 3 seeds: the "
           "Deformable half 33 min, the Conditional half 73 min, about 1 h 50 min; at this machine's slow hours "
           "steps take up to twice as long; 800 conditional steps left every row on the loss plateau)",
)

COMPONENTS = Suite(
    name="components",
    title="Each DETRDistill component alone and combined (paper Table 5)",
    paper_source="Table 5: AdaMixer R101 -> R50, COCO, 12 epochs (LD+AD and FD+AD are not in the paper; "
                 "they make the 'all three above any pair' target checkable)",
    variants=(
        Variant(STUDENT, "none (student)", distilled=False, baseline=None, paper=ADAMIXER_STUDENT, quick=True),
        Variant("ld", "LD", kd(ld=True), paper={"*": 43.7}, quick=True),
        Variant("fd", "FD", kd(fd=True), paper={"*": 43.5}, quick=True),
        Variant("ad", "AD", kd(ad=True), paper={"*": 42.9}, quick=True),
        Variant("ld_fd", "LD + FD", kd(ld=True, fd=True), paper={"*": 44.3}),
        Variant("ld_ad", "LD + AD", kd(ld=True, ad=True)),
        Variant("fd_ad", "FD + AD", kd(fd=True, ad=True)),
        Variant("all", "LD + FD + AD", DETRDISTILL, paper={"*": 44.7}, quick=True),
    ),
    reference="all",
    # Per seed: 800 x (0.115 + 0.27 + 0.27 + 0.29 + 0.30 + 0.31 + 0.31 + 0.34 + 0.34 same-time)
    # = 2020 s; 3 seeds: 101 min, plus 27 runs x ~30 s: about 115 min. Runs of the same resolved
    # config are shared between suites: after `mask` and `progressive`, the student, LD (their
    # progressive row) and FD (their quality row) are done, leaving 800 x (0.29 + 0.30 + 0.31 +
    # 0.31 + 0.34 + 0.34) + 6 x 30 s ~ 28 min a seed, about 85 min. --quick (none, LD, FD, AD,
    # all, same-time): 500 x 1.63 s + 6 x 30 s = 17 min. Conditional DETR (only with --families)
    # runs main's 2000 steps, so its student and all-three rows are main's runs, reused.
    steps={"conditional_detr": 2000, "*": 800},
    quick_steps={"*": 500},
    targets=(
        Target("each component alone (LD, FD, AD) above the student", ("ld", "fd", "ad"), (STUDENT,)),
        Target("all three above any pair (LD+FD, LD+AD, FD+AD)", ("all",), ("ld_fd", "ld_ad", "fd_ad")),
    ),
    budget="800 steps per run (about 2 h for 3 seeds; about 85 min once `mask` and `progressive` have run); "
           "conditional (with --families) 2000 steps, as in main: its 6 rows beyond main's (18 runs) took 62 min",
)

LOGITS = Suite(
    name="logits",
    title="Which logits to distil: positive class, positive box, negative box (paper Table 6)",
    paper_source="Table 6: AdaMixer R101 -> R50, COCO, 12 epochs, LD only. The text copy of the paper lost the "
                 "table's check marks; the rows are read from its order and text (positives only: minor gains; "
                 "negative boxes: most of it), and 43.6 is assigned to pos-reg + neg-reg by that reading",
    variants=(
        Variant(STUDENT, "none (student)", distilled=False, baseline=None, paper=ADAMIXER_STUDENT, quick=True),
        Variant("pos_cls", "pos-cls", logits_terms(True, False, False), paper={"*": 42.6}),
        Variant("pos_reg", "pos-reg", logits_terms(False, True, False), paper={"*": 42.6}),
        Variant("neg_reg", "neg-reg", logits_terms(False, False, True), paper={"*": 43.4}, quick=True),
        Variant("pos_cls_reg", "pos-cls + pos-reg", logits_terms(True, True, False), paper={"*": 42.5}, quick=True),
        Variant("pos_cls_neg_reg", "pos-cls + neg-reg", logits_terms(True, False, True)),
        Variant("pos_reg_neg_reg", "pos-reg + neg-reg", logits_terms(False, True, True), paper={"*": 43.6}),
        Variant("all", "pos-cls + pos-reg + neg-reg", logits_terms(True, True, True), paper={"*": 43.7}, quick=True),
    ),
    reference="all",
    # Per seed: 800 x (0.115 + 7 x 0.27 + 0.27 same-time) = 1820 s; 3 seeds: 91 min, plus 27 runs
    # x ~30 s: about 105 min. After `progressive`, the student, "all" (its progressive row) and the
    # equal-time student are done: 800 x 6 x 0.27 + 6 x 30 s ~ 25 min a seed, about 75 min.
    # --quick (4 rows + same-time): 500 x 1.20 s + 5 x 30 s = 12.5 min.
    steps={"*": 800},
    quick_steps={"*": 500},
    targets=(
        Target("negative-box KD alone above positives-only KD (pos-cls + pos-reg)", ("neg_reg",), ("pos_cls_reg",),
               source="the paper's finding (Table 6)"),
        Target("LD with all three terms above the student", ("all",), (STUDENT,), source="the paper's finding"),
    ),
    budget="800 steps per run (about 1 h 45 min for 3 seeds; about 75 min once `progressive` has run)",
)

PROGRESSIVE = Suite(
    name="progressive",
    title="Progressive (stage-by-stage) vs last-stage logits distillation (paper Table 7)",
    paper_source="Table 7: AdaMixer R101 -> R50, COCO, 12 epochs, LD only",
    variants=(
        Variant(STUDENT, "student", distilled=False, baseline=None, paper=ADAMIXER_STUDENT, quick=True),
        Variant("last_stage", "last-stage LD", kd(ld=True, **{"distill.logits.progressive": False}),
                paper={"*": 43.1}, quick=True),
        Variant("progressive", "progressive LD", kd(ld=True, **{"distill.logits.progressive": True}),
                paper={"*": 43.7}, quick=True),
    ),
    reference="progressive",
    # Per seed: 800 x (0.115 + 0.27 + 0.27 + 0.27 same-time) = 740 s; 3 seeds: 37 min, plus 12 runs
    # x ~30 s: about 43 min. --quick: 500 x 0.93 s + 4 x 30 s = 10 min.
    steps={"*": 800},
    quick_steps={"*": 500},
    targets=(
        Target("progressive LD above last-stage LD", ("progressive",), ("last_stage",),
               source="the paper's finding (Table 7)"),
    ),
    budget="800 steps per run (about 45 min for 3 seeds)",
)

MASK = Suite(
    name="mask",
    title="Feature distillation masks: none, vanilla (eq. 6), quality-weighted (eq. 8) (paper Table 2)",
    paper_source="Table 2: AdaMixer R101 -> R50, COCO, 12 epochs, FD only",
    variants=(
        Variant(STUDENT, "no FD (student)", distilled=False, baseline=None, paper=ADAMIXER_STUDENT, quick=True),
        Variant("vanilla", "FD, vanilla mask (eq. 6)", kd(fd=True, **{"distill.features.mask": "vanilla"}),
                paper={"*": 41.9}, quick=True),
        Variant("quality", "FD, quality mask (eq. 8)", kd(fd=True, **{"distill.features.mask": "quality"}),
                paper={"*": 43.5}, quick=True),
    ),
    reference="quality",
    # As progressive: about 43 min for 3 seeds; --quick 10 min.
    steps={"*": 800},
    quick_steps={"*": 500},
    targets=(
        Target("quality-weighted FD above vanilla FD", ("quality",), ("vanilla",),
               source="the paper's finding (Table 2)"),
        Target("quality-weighted FD above the student", ("quality",), (STUDENT,), source="the paper's finding"),
    ),
    budget="800 steps per run (about 45 min for 3 seeds)",
)


def _depth_rows() -> tuple[Variant, ...]:
    published = {(6, 6): (33.0, 38.1), (6, 3): (30.3, 36.6), (3, 6): (33.0, 37.7), (3, 3): (29.9, 35.7)}
    rows = []
    for (encoder, decoder), (student_ap, kd_ap) in published.items():
        layers = {"model.encoder_layers": encoder, "model.decoder_layers": decoder}
        quick = (encoder, decoder) in ((6, 6), (3, 3))
        student_key = f"student_{encoder}x{decoder}"
        rows.append(Variant(student_key, f"student {encoder}/{decoder}", layers, distilled=False, baseline=None,
                            paper={"*": student_ap}, quick=quick))
        rows.append(Variant(f"kd_{encoder}x{decoder}", f"DETRDistill {encoder}/{decoder}", {**layers, **DETRDISTILL},
                            baseline=student_key, paper={"*": kd_ap}, quick=quick))
    return tuple(rows)


DEPTH = Suite(
    name="depth",
    title="Students with fewer encoder/decoder stages than a 6/6 teacher, with and without KD (paper Table 4)",
    paper_source="Table 4: Conditional DETR R101 6/6 teacher (36.2 AP) -> R50 students, COCO, 12 epochs",
    variants=_depth_rows(),
    reference="kd_6x6",
    # Measured at a slow hour of this machine: the teacher preset with 6 encoder and 6 decoder
    # layers, 3600 steps at 0.70 s, 42 min, trained once. Per seed: 600 x (students 0.28 + 0.25
    # + 0.21 + 0.12, KD 0.60 + 0.52 + 0.46 + 0.36) + same-time 1290 x 0.25 = 2020 s, plus 9 evals
    # x ~30 s: 38 min; 3 seeds about 1 h 55 min (2 h 40 min with the teacher). --quick (6/6 and 3/3
    # rows + same-time, its own 600-step teacher, 7 min): 250 x 1.36 s + 530 x 0.25 s + 5 x 30 s
    # + 7 min = 18 min.
    steps={"*": 600},
    quick_steps={"*": 250},
    teacher_overrides={"model.encoder_layers": 6, "model.decoder_layers": 6},
    teacher_suffix="_6x6",
    quick_teacher_steps=600,
    show_teacher=True,
    paper_teacher={"*": 36.2},
    targets=(
        Target("KD 6/6 above student 6/6", ("kd_6x6",), ("student_6x6",), source="the paper's finding (Table 4)"),
        Target("KD 6/3 above student 6/3", ("kd_6x3",), ("student_6x3",), source="the paper's finding"),
        Target("KD 3/6 above student 3/6", ("kd_3x6",), ("student_3x6",), source="the paper's finding"),
        Target("KD 3/3 above student 3/3", ("kd_3x3",), ("student_3x3",), source="the paper's finding"),
        Target("KD 3/3 above the undistilled 6/6 student", ("kd_3x3",), ("student_6x6",),
               source="the paper's finding"),
    ),
    budget="600 steps per run: about 2 h for 3 seeds, plus 40 min for the 6/6 teacher, trained once",
)

RELEASE = Suite(
    name="release",
    title="The paper's DETRDistill vs the public release's variants",
    paper_source="Table 3, Deformable DETR (the release has no table for its variants)",
    variants=(
        Variant(STUDENT, "student", distilled=False, baseline=None, paper={"deformable_detr": 44.1}, quick=True),
        Variant("paper", "DETRDistill, paper defaults", DETRDISTILL, paper={"deformable_detr": 46.6}, quick=True),
        Variant("all_pairs", "LD class + box on every pair (release)",
                {**DETRDISTILL, "distill.logits.all_pairs": True}),
        Variant("matched", "LD terms over all matched pairs (release's denominator)",
                {**DETRDISTILL, "distill.logits.normalise": "matched"}),
        Variant("release_mask", "FD cosine mask (release)", {**DETRDISTILL, "distill.features.mask": "release"}),
        Variant("encoder_input", "FD on the encoder input (release)",
                {**DETRDISTILL, "distill.features.features": "encoder_input"}),
        Variant("release_all", "all three release choices",
                {**DETRDISTILL, "distill.logits.all_pairs": True, "distill.features.mask": "release",
                 "distill.features.features": "encoder_input"}, quick=True),
    ),
    reference="paper",
    # Measured (Deformable, 3 seeds, 2026-11-26): 53 min, at 63 ms a student step and 142-150 ms a
    # distill step; at this machine's slow hours (0.115 and 0.34 s) it would be about 1 h 50 min.
    # --quick (student, paper, release_all, same-time): 500 x 1.14 s + 4 x 30 s = 11.5 min at the
    # slow hours' step times. Conditional DETR (only with --families) runs main's 2000 steps, so its
    # student and paper rows are main's runs, reused.
    steps={"conditional_detr": 2000, "*": 800},
    quick_steps={"*": 500},
    budget="deformable 800 steps per run (measured: 53 min for 3 seeds; up to twice that at this machine's "
           "slow hours); conditional 2000, as in main",
)

STUDENT_2X = "student_2x"

CONVERGED = Suite(
    name="converged",
    title="DETRDistill at convergence: the student on its plateau, at S and 2S steps, against DETRDistill at S "
          "(the paper's claim, Table 3)",
    paper_source="Table 3: COCO AP after the full schedule (Deformable and Conditional DETR 50 epochs, AdaMixer 12); "
                 "the paper has no 2x-schedule student",
    variants=(
        Variant(STUDENT, "student, S steps", distilled=False, baseline=None, quick=True,
                paper={"deformable_detr": 44.1, "conditional_detr": 40.7, "adamixer": 42.3}),
        Variant(STUDENT_2X, "student, 2S steps", distilled=False, baseline=STUDENT, quick=True, steps_factor=2),
        Variant("detrdistill", "DETRDistill, S steps", DETRDISTILL, baseline=STUDENT_2X, quick=True,
                paper={"deformable_detr": 46.6, "conditional_detr": 42.9, "adamixer": 44.7}),
        # The strongest feature baseline of each family in `main` (FGFI on Deformable DETR, FGD on
        # Conditional DETR; AdaMixer's Table 1 baseline is FGFI), against the same 2S student.
        Variant("fgfi", "FGFI, S steps", feature_baseline("fgfi"), baseline=STUDENT_2X,
                families=("deformable_detr", "adamixer"), paper={"adamixer": 42.6}),
        Variant("fgd", "FGD, S steps", feature_baseline("fgd"), baseline=STUDENT_2X, families=("conditional_detr",),
                paper={"conditional_detr": 40.4}),
    ),
    reference="detrdistill",
    steps={"deformable_detr": 4000, "conditional_detr": 10000, "adamixer": 2000, "*": 4000},
    quick_steps={"*": 500},
    families=("deformable_detr", "conditional_detr", "adamixer"),
    checkpoints=8,
    teacher_steps={"deformable_detr": 8000, "conditional_detr": 16000, "adamixer": 4000, "*": 8000},
    teacher_suffix="_converged",
    show_teacher=True,
    paper_teacher={"deformable_detr": 45.5, "conditional_detr": 42.4, "adamixer": 43.6},
    equal_time=False,  # the 2S student is the cost comparison: DETRDistill's S steps cost about 2S student steps
    keep_ap_tables=True,
    interleaved_times=True,
    targets=(
        Target("the student is on its plateau: student at 2S - student at S < 1 AP", (STUDENT_2X,), (STUDENT,),
               max_gain=0.01, source="issue 22"),
        Target("DETRDistill at S - student at 2S >= +2.5 AP, interval above 0", ("detrdistill",), (STUDENT_2X,),
               min_gain=0.025, interval=True, families=("deformable_detr", "conditional_detr"), source="issue 22"),
        Target("DETRDistill at S - student at 2S >= +1.5 AP, interval above 0", ("detrdistill",), (STUDENT_2X,),
               min_gain=0.015, interval=True, families=("adamixer",), source="issue 22"),
        Target("DETRDistill at S within 2 AP of its teacher (in at least one family)", ("detrdistill",), (TEACHER,),
               min_gain=-0.02, source="issue 22"),
        Target("DETRDistill above the feature baseline at S", ("detrdistill",), ("fgfi",),
               families=("deformable_detr", "adamixer"), source="the paper's finding (Table 3)"),
        Target("DETRDistill above the feature baseline at S", ("detrdistill",), ("fgd",),
               families=("conditional_detr",), source="the paper's finding (Table 3)"),
    ),
    budget="S per family (student runs S and 2S, DETRDistill and the feature baseline S); the teacher trained "
           "once to its own plateau",
)

SUITES: dict[str, Suite] = {s.name: s for s in (MAIN, COMPONENTS, LOGITS, PROGRESSIVE, MASK, DEPTH, RELEASE, CONVERGED)}


def preset_exists(name: str) -> bool:
    try:
        resolve_config_path(name)
    except ConfigError:
        return False
    return True


def suite_families(
    suite: Suite, requested: list[str] | None = None, quick: bool = False,
    presets: Mapping[str, FamilyPresets] = FAMILY_PRESETS,
) -> list[str]:
    """The families to run: ``requested`` (checked), else ``suite.families`` (with ``quick``,
    only the first), so a suite's default command stays within its stated budget."""
    if requested:
        for family in requested:
            if family not in presets:
                raise ConfigError(f"--families: unknown family {family!r}; known: {sorted(presets)}")
            missing = [p for p in (presets[family].teacher, presets[family].student) if not preset_exists(p)]
            if missing:
                raise ConfigError(f"--families {family}: preset(s) {missing} not found in detrdistill/configs")
        return list(dict.fromkeys(requested))
    return list(suite.families[:1] if quick else suite.families)


def check_suite(suite: Suite) -> None:
    """Refuse a suite whose rows or targets name rows it does not have."""
    keys = [v.key for v in suite.variants]
    problems = []
    if len(set(keys)) != len(keys):
        problems.append(f"duplicate variant keys in {keys}")
    for reserved in (SAME_TIME, TEACHER):
        if reserved in keys:
            problems.append(f"{reserved!r} is a reserved row name (the equal-time student, the teacher); rename that "
                            "variant")
    if suite.reference not in keys:
        problems.append(f"reference {suite.reference!r} is not a variant")
    elif suite.variant(suite.reference).baseline not in keys:
        problems.append(f"reference {suite.reference!r} needs a baseline row")
    for variant in suite.variants:
        if variant.baseline is not None and variant.baseline not in keys:
            problems.append(f"variant {variant.key!r}: baseline {variant.baseline!r} is not a variant")
    for target in suite.targets:
        unknown = [k for k in target.winners + target.losers if k not in keys and k != TEACHER]
        if unknown:
            problems.append(f"target {target.text!r} names unknown rows {unknown}")
    quick = {v.key: v for v in suite.variants if v.quick}
    if suite.reference in keys and suite.reference not in quick:
        problems.append(f"reference {suite.reference!r} must be a quick row (the equal-time student needs it)")
    for variant in quick.values():
        if variant.baseline is not None and variant.baseline not in quick:
            problems.append(f"quick row {variant.key!r} needs its baseline {variant.baseline!r} to be a quick row")
    if "*" not in suite.steps or "*" not in suite.quick_steps:
        problems.append("steps and quick_steps need a '*' entry for families not named")
    if problems:
        raise ConfigError(f"benchmark suite {suite.name!r}: " + "; ".join(problems))

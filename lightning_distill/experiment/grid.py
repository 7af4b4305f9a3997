"""The experiment grid: which models to train (the paper's Table 1 axes) and its expansion into cells.

A grid names an encoder family and the directory of its base configs, the student frame counts k, the
from-scratch baselines (frame samplers) and the teacher-student variants (Serial/Parallel x loss set), and
the seeds. ``expand_grid`` turns it into *cells*: one training run each, the teacher first.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from lightning_distill.config_files import load_config
from lightning_distill.data.samplers import FrameSampler
from lightning_distill.errors import ConfigError
from lightning_distill.models.skim import SkimEncoder
from lightning_distill.training.losses import LossTerm

# The names a grid uses are the classes' own (one place per name): ``FrameSampler.registry`` for baselines,
# ``LossTerm.registry`` for loss terms.
BASELINES = FrameSampler.registry
LOSS_TERMS = LossTerm.registry


def representation_terms() -> set[str]:
    """The loss terms that only match representations: they send no gradient into the classifier head."""
    return {key for key, term in LOSS_TERMS.items() if not term.trains_head}


MODES = ("serial", "parallel")
# Where a baseline's weights come from (``Baseline.weights``).
BASELINE_WEIGHTS = ("scratch", "teacher")
# A piece of a cell's config (trainer or data settings, overrides), kept as plain YAML: typed ``dict[str, Any]``,
# jsonargparse would instantiate each ``{class_path, init_args}`` inside it (a sampler, a callback), and a cell's
# config file could not hold the object.
ConfigPart = dict

# Frames chosen per video (``StudentVariant.selection``): the name a grid uses -> the role config of the model that
# chooses (trained once per seed against the seed's teacher).
SELECTIONS = {"skim": "skim-scorer", "utility-skim": "utility-skim-scorer"}
# The report's name for the kind of each selection's scorer.
SCORER_KINDS = {"skim": "Skim", "utility-skim": "Utility skim"}
# The skim settings a scorer's label puts in words; any other setting the grid gives is listed as "name value".
WORDED_SETTINGS = ("rgb_dims", "audio_dims", "stride")


def scorer_name(selection: str, scorer: ConfigPart) -> str:
    """The id of a frame scorer trained with encoder settings ``scorer``: the selection's name, then the settings
    in key order, e.g. ``skim`` or ``skim-audio_dims32-rgb_dims32``."""
    return "-".join([selection, *(f"{key}{value}" for key, value in sorted(scorer.items()))])


def scorer_method(selection: str, role_config: Path, scorer: ConfigPart) -> str:
    """The report's label of ``selection``'s frame scorer: what it skims, from its encoder's settings (the
    ``SkimEncoder`` defaults, under the role config's, under the grid's ``scorer``), e.g. "Utility skim of 32 rgb + 32
    audio features, every 4th frame (frame scorer)"."""
    role_encoder = load_config(role_config).get("model", {}).get("init_args", {}).get("encoder", {})
    defaults = {name: p.default for name, p in inspect.signature(SkimEncoder).parameters.items()
                if p.default is not inspect.Parameter.empty}
    settings = {**defaults, **role_encoder.get("init_args", {}), **scorer}
    features = " + ".join(f"{settings[key]} {kind}" for key, kind in (("rgb_dims", "rgb"), ("audio_dims", "audio"))
                          if settings[key])
    words = [f"{features} features"]
    if settings["stride"] > 1:
        words.append(f"every {ordinal(settings['stride'])} frame")
    words += [f"{key} {value}" for key, value in sorted(scorer.items()) if key not in WORDED_SETTINGS]
    return f"{SCORER_KINDS[selection]} of {', '.join(words)} (frame scorer)"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, ..."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"

# The data module arguments that say where the data is; synthetic data fills them in.
DATA_FILE_KEYS = ("train_files", "val_files", "test_files")


def trained_on_tag(selection: str) -> str:
    """The id suffix of a model trained on other frames than it is tested on, e.g. ``trained-on-random``."""
    return f"trained-on-{selection}"


def trained_on_label(selection: str) -> str:
    """The row-label suffix of a model trained on other frames than it is tested on, e.g. ``trained on Random-k``."""
    return f"trained on {BASELINES[selection].label}"


@dataclass
class Baseline:
    """A model of k frames without a teacher's training (a row of the upper half of Table 1), where a grid's
    ``baselines`` entry is more than a sampler's name.

    Args:
        sampler: the frames it is tested on, a ``FrameSampler.registry`` name (``uniform``, ``random``, ...).
        train_selection: the frames of its training batches, another such name; e.g. ``random`` under ``uniform``:
            new frames every epoch, tested on Uniform-k (the fair baseline of students trained on random frames).
        weights: ``scratch``, a model trained from random weights on k frames; or ``teacher``, the seed's teacher
            itself, not trained further, tested on k frames: what running the teacher on fewer frames gives, the
            start of a student with ``encoder_from_teacher``.
    """

    sampler: str
    train_selection: str | None = None
    weights: str = "scratch"

    @property
    def slug(self) -> str:
        """Filesystem-safe id, e.g. ``uniform``, ``uniform-trained-on-random`` or ``uniform-teacher-weights``."""
        if self.weights == "teacher":
            return f"{self.sampler}-teacher-weights"
        return self.sampler + (f"-{trained_on_tag(self.train_selection)}" if self.train_selection else "")

    @property
    def label(self) -> str:
        """The report's row label, e.g. ``Uniform-k``, ``Uniform-k (trained on Random-k)`` or ``Uniform-k (the
        teacher, untrained)``."""
        label = BASELINES[self.sampler].label
        if self.weights == "teacher":
            return f"{label} (the teacher, untrained)"
        return f"{label} ({trained_on_label(self.train_selection)})" if self.train_selection else label


@dataclass
class StudentVariant:
    """One teacher-student training recipe (a row of the lower half of Table 1).

    Args:
        mode: ``serial`` (teacher trained first, then frozen) or ``parallel`` (teacher and student jointly).
        losses: the student's loss terms, a subset of ``rep``, ``rep_i`` (L_rep^I), ``pred``, ``ce``. A serial
            set of representation terms only (nothing trains the classifier) adds the paper's second stage:
            fine-tune the student and the teacher's classifier with L_CE.
        weights: optional weight per term (default: the base config's weights, else 1).
        options: optional settings per term, e.g. ``{rep: {form: standardized}}`` (merged into its init_args).
        tag: tells variants of the same mode and losses apart (``parallel-rep_pred_ce-std``); shown in the label.
        module: further init_args of the variant's module, e.g. ``{warmup_epochs: 1}`` for a Parallel student.
        train_ks: makes an any-k student (Serial only): ONE student per seed, trained with a k drawn per batch from
            these (``AnyKSampler``) and tested at every k of the grid, each k's cell testing that one checkpoint:
            the weights with the best mean validation GAP over the grid's ks (``StudentModule.validation_ks``),
            which early stopping watches too.
            An any-k variant without a tag is tagged ``any-k`` (``any-k-also-k6-k30`` with ``train_every_batch``).
        train_every_batch: with ``train_ks``, ks among them that every training batch is also seen at, their losses
            added (``AnyKSampler(every_batch=...)``), e.g. ``[6, 30]``: the smallest and the largest.
        teachers: the families (config parts under ``family/``) whose teachers the student distils from, as one
            ensemble (Serial only, ``StudentModule``'s ``ensemble_teachers``); the grid trains a teacher of each
            family per seed. None: the grid family's teacher alone, the paper's Serial student. Without a tag the
            variant is tagged ``from-<families joined by +>``.
        selection: frames chosen per video instead of Uniform-k (Serial only): ``skim``, the best frame of each of k
            segments by an audio skim (``SkimSampler``), which the grid trains per seed against that seed's teacher
            (cell ``skim-s<seed>``); ``utility-skim``, the same by a skim of every 4th frame's leading 32 rgb and 32
            audio features that estimates each frame's utility to the teacher (``FrameUtilityModule``, cell
            ``utility-skim-s<seed>``). Without a tag the variant is tagged with the selection's name. With
            ``train_ks``: one any-k student trained on Uniform frames at the drawn k, tested at each k on the
            selection's frames (tagged ``any-k-<selection>``).
        scorer: init_args of the frame scorer's encoder (``SkimEncoder``) for ``selection``, e.g. ``{rgb_dims: 32,
            audio_dims: 32}``: a skim of the leading rgb and audio features instead of all the audio. Variants with
            equal settings share one scorer per seed (cell ``skim-audio_dims32-rgb_dims32-s<seed>``); without a tag
            the variant is tagged with that scorer's id.
        train_selection: the frames of the student's training batches (a ``FrameSampler.registry`` name, e.g.
            ``random``: new frames every epoch), tested on Uniform-k; Serial or Parallel. Without a tag the variant
            is tagged ``trained-on-<name>``.
        stop_on: the validation metric whose stalling stops the cell (the grid's ``patience``) instead of the
            checkpoint's, e.g. ``val/teacher/gap`` for a Parallel student: it then trains for as long as its
            teacher improves, and the tested weights are still the student's best. Without it, a Parallel student
            that joins late (``module: {student_start_epoch: N}``, or ``student_start_patience``) is watched from its
            join on (``DelayedEarlyStopping``): its GAP cannot improve before it joins.
        trainer: ``Trainer`` arguments of this variant's cells over the grid's, e.g. ``{max_epochs: 30}`` for a
            student that joins late and needs the grid's epochs after it joins.
    """

    mode: str
    losses: list[str]
    weights: dict[str, float] = field(default_factory=dict)
    options: dict[str, ConfigPart] = field(default_factory=dict)
    tag: str = ""
    module: ConfigPart = field(default_factory=dict)
    train_ks: list[int] | None = None
    train_every_batch: list[int] | None = None
    teachers: list[str] | None = None
    selection: str | None = None
    scorer: ConfigPart = field(default_factory=dict)
    train_selection: str | None = None
    stop_on: str | None = None
    trainer: ConfigPart = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.train_ks and self.selection and not self.tag:
            self.tag = f"any-k-{scorer_name(self.selection, self.scorer)}"
        if self.train_ks and not self.tag:
            also = "".join(f"-k{k}" for k in sorted(set(self.train_every_batch or [])))
            self.tag = f"any-k-also{also}" if also else "any-k"
        if self.teachers and not self.tag:
            self.tag = self._teachers_tag
        if self.selection and not self.tag:
            self.tag = scorer_name(self.selection, self.scorer)
        if self.train_selection and not self.tag:
            self.tag = trained_on_tag(self.train_selection)

    @property
    def _teachers_tag(self) -> str:
        """The tag of an ensemble variant that names none: ``from-<families joined by +>``."""
        return "from-" + "+".join(self.teachers or [])

    @property
    def slug(self) -> str:
        """Filesystem-safe id, e.g. ``serial-rep_pred_ce``."""
        return f"{self.mode}-{'_'.join(self.losses)}" + (f"-{self.tag}" if self.tag else "")

    @property
    def two_stage(self) -> bool:
        """Whether the paper's second (L_CE fine-tuning) stage follows: serial, and no term trains the head."""
        return self.mode == "serial" and set(self.losses) <= representation_terms()

    @property
    def label(self) -> str:
        """The paper's row label, e.g. ``Serial L_rep, L_pred, L_CE``."""
        label = f"{self.mode.capitalize()} {', '.join(LOSS_TERMS[t].symbol for t in self.losses)}"
        if self.teachers and self.tag == self._teachers_tag:
            return f"{label} (teachers: {' + '.join(self.teachers)})"
        if self.train_selection and self.tag == trained_on_tag(self.train_selection):
            return f"{label} ({trained_on_label(self.train_selection)})"
        return f"{label} ({self.tag})" if self.tag else label


@dataclass
class Grid:
    """What to train and compare: a Table-1-shaped grid for one encoder family.

    Args:
        family: the family config part, ``<configs>/family/<family>.yaml`` (``hrnn``, ``netvlad-tiny``, ...).
        configs: the folder of the config parts (``role/``, ``family/``, ``data/``); relative to the working
            directory.
        data_config: a data part under ``configs`` (e.g. ``data/yt8m.yaml``) stacked on every cell's config;
            None when ``data`` or ``synthetic`` say where the data is.
        ks: student frame counts (the table's columns; paper: 6, 10, 15, 20, 30).
        baselines: models trained from scratch on k frames, by sampler: ``uniform``, ``random``, ``first``,
            ``middle``, ``last``, ``first_middle_last``; or a ``Baseline``, e.g. ``{sampler: uniform,
            train_selection: random}`` (trained on Random-k frames, tested on Uniform-k) or ``{sampler: uniform,
            weights: teacher}`` (the seed's teacher tested on Uniform-k frames).
        students: teacher-student variants (Serial/Parallel x loss set).
        seeds: one run of every cell per seed; the report averages over seeds.
        trainer: ``Trainer`` arguments set in every cell (e.g. ``max_epochs``, ``limit_train_batches``).
        data: ``YT8MDataModule`` arguments set in every cell (e.g. ``batch_size``, ``train_files``); data files
            not set here come from the base configs.
        k_overrides: config overrides for the k-frame cells at one k, merged into their config, e.g.
            ``{6: {model: {init_args: {encoder: {init_args: {block_length: 3}}}}}}`` (H-RNN's blocks must tile k).
        synthetic: when set, ``lightning_distill.data.synthetic.generate`` arguments: data is generated once into
            ``<output>/data`` and replaces the data files of ``data``.
        tsne_videos: test videos embedded in the teacher/student t-SNE plot (0 skips the plot).
        patience: stop a cell when its monitored validation metric (GAP) has not improved for this many epochs
            (``trainer.max_epochs`` is the cap); None trains every cell for max_epochs.
    """

    family: str
    ks: list[int]
    configs: str = "configs"
    data_config: str | None = None
    baselines: list[str | Baseline] = field(default_factory=lambda: ["uniform"])
    students: list[StudentVariant] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    trainer: ConfigPart = field(default_factory=dict)
    data: ConfigPart = field(default_factory=dict)
    k_overrides: dict[int, ConfigPart] = field(default_factory=dict)
    synthetic: ConfigPart | None = None
    tsne_videos: int = 500
    patience: int | None = None


@dataclass(frozen=True)
class Cell:
    """One training run of the grid.

    Attributes:
        name: unique id and directory name, e.g. ``teacher-s0``, ``uniform-k6-s0``, ``serial-rep_ce-k6-s0``.
        role: ``teacher``, ``baseline``, ``serial`` or ``parallel``; picks the base config.
        method: the report's row label (``Teacher``, ``Uniform-k``, ``Serial L_rep, L_CE``, ...).
        k: student frame count; None for the all-frames teacher.
        seed: the run's seed.
        base_configs: the config parts the cell's config starts from, merged in order.
        sampler: the sampler's key (``FrameSampler.registry``) for k-frame models, else None.
        train_sampler: the key of the sampler of its training batches, when not ``sampler``.
        variant: the teacher-student recipe, for ``serial``/``parallel`` cells.
        teacher: name of the cell whose checkpoint a serial student distils from (it must finish first).
        trained_by: the cell whose checkpoint this cell only tests, at its own k: for an any-k student at its second
            k but the grid's largest, the cell of that k; for a baseline of the teacher's weights, the seed's teacher.
        ensemble: the teacher cells, of other families, whose checkpoints join ``teacher``'s as an ensemble.
        scorer: the cell training the frame scorer whose choice of frames this student reads (``selection``).
        encoder: init_args of the cell's encoder over its base configs' (a frame scorer's settings).
    """

    name: str
    role: str
    method: str
    k: int | None
    seed: int
    base_configs: tuple[Path, ...]
    sampler: str | None = None
    train_sampler: str | None = None
    variant: StudentVariant | None = None
    teacher: str | None = None
    trained_by: str | None = None
    ensemble: tuple[str, ...] = ()
    scorer: str | None = None
    encoder: ConfigPart = field(default_factory=dict)

    @property
    def waits_for(self) -> list[str]:
        """The cells that must finish before this one starts."""
        return [name for name in (self.teacher, self.trained_by, *self.ensemble, self.scorer) if name is not None]


TEACHER_METHOD = "Teacher"


def teacher_method(family: str) -> str:
    """The method label of a teacher of another family than the grid's, e.g. ``Teacher (nextvlad-tiny)``."""
    return f"{TEACHER_METHOD} ({family})"


def check_grid(grid: Grid) -> None:
    """Raise ``ConfigError`` naming the first invalid entry of ``grid`` and what would be valid."""
    if not grid.ks:
        raise ConfigError("the grid has no ks: list the student frame counts, e.g. ks: [6, 30]")
    bad_k = [k for k in grid.ks if not isinstance(k, int) or k < 1]
    if bad_k:
        raise ConfigError(f"ks {bad_k} are invalid: every k is a frame count >= 1")
    baselines = baseline_rows(grid)
    for name, values in {"ks": grid.ks, "baselines": [b.slug for b in baselines], "seeds": grid.seeds}.items():
        if len(set(values)) != len(values):
            raise ConfigError(f"{name} {values} lists a value twice: list each once")
    unknown = [name for b in baselines for name in (b.sampler, b.train_selection) if name and name not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baselines {unknown}: choose from {', '.join(BASELINES)}")
    for baseline in baselines:
        if baseline.weights not in BASELINE_WEIGHTS:
            raise ConfigError(
                f"baseline {baseline.slug} has weights {baseline.weights!r}: choose from {', '.join(BASELINE_WEIGHTS)}"
            )
        if baseline.weights == "teacher" and baseline.train_selection:
            raise ConfigError(
                f"baseline {baseline.slug} sets train_selection, but the teacher's weights are not trained on k "
                "frames: drop one"
            )
    if not grid.seeds:
        raise ConfigError("the grid has no seeds: give at least one, e.g. seeds: [0]")
    slugs = [variant.slug for variant in grid.students]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"students list a variant twice ({slugs}): list each mode + loss set once")
    for variant in grid.students:
        _check_variant(variant)
        if variant.stop_on is not None and grid.patience is None:
            raise ConfigError(f"{variant.slug} sets stop_on, but the grid stops no cell early: set patience")
        start = variant.module.get("student_start_epoch") or 0
        max_epochs = {**grid.trainer, **variant.trainer}.get("max_epochs")
        if max_epochs is not None and start >= max_epochs:
            raise ConfigError(
                f"{variant.slug} joins at epoch {start}, but its cells train {max_epochs} epochs: raise its "
                "trainer's max_epochs (e.g. trainer: {max_epochs: " + str(start + 10) + "}) or join earlier"
            )
    stray_ks = [k for k in grid.k_overrides if k not in grid.ks]
    if stray_ks:
        raise ConfigError(f"k_overrides for k={stray_ks} which are not in ks {grid.ks}: add them to ks or drop them")
    if grid.patience is not None and grid.patience < 1:
        raise ConfigError(f"patience={grid.patience}: give the epochs without improvement to wait (>= 1), or null")
    if grid.tsne_videos < 0:
        raise ConfigError(f"tsne_videos={grid.tsne_videos} is negative: pass 0 to skip the t-SNE plot")
    if grid.synthetic is not None and any(key in grid.data for key in DATA_FILE_KEYS):
        raise ConfigError("the grid sets both synthetic and data files: keep one (synthetic data fills the files)")
    for role in _roles(grid):
        for path in base_config_paths(grid, role):
            if not path.is_file():
                raise ConfigError(
                    f"config part {path} for the {role} cells does not exist: check family and configs"
                    + _relative_configs_hint(grid.configs)
                )
    for family in other_teacher_families(grid):
        path = base_config_paths(grid, "teacher", family)[1]
        if not path.is_file():
            raise ConfigError(f"config part {path} for the teachers of family {family} does not exist: check teachers")


def _relative_configs_hint(configs: str) -> str:
    """Why a relative ``configs`` folder may be missing: it is looked up from where the command runs, not from the
    experiment file (the presets' ``configs`` is the project's, so they run from the project root). Nothing when
    the folder is there: then the family or a part is what is wrong."""
    if Path(configs).is_absolute() or Path(configs).is_dir():
        return ""
    return (
        f" ({configs!r} is looked up from the working directory {Path.cwd()}: run from the project root, or set "
        "grid.configs to the configs folder)"
    )


def _check_variant(variant: StudentVariant) -> None:
    if variant.mode not in MODES:
        raise ConfigError(f"student mode {variant.mode!r} is unknown: use {' or '.join(MODES)}")
    if not variant.losses:
        raise ConfigError(f"the {variant.mode} student has no losses: choose from {', '.join(LOSS_TERMS)}")
    unknown = [t for t in variant.losses if t not in LOSS_TERMS]
    if unknown:
        raise ConfigError(f"unknown loss terms {unknown} in {variant.slug}: choose from {', '.join(LOSS_TERMS)}")
    if len(set(variant.losses)) != len(variant.losses):
        raise ConfigError(f"{variant.slug} lists a loss term twice: list each once")
    stray = [t for t in [*variant.weights, *variant.options] if t not in variant.losses]
    if stray:
        raise ConfigError(f"weights or options for {stray} in {variant.slug} are not among its losses {variant.losses}")
    if variant.train_ks is not None:
        if variant.mode != "serial":
            raise ConfigError(f"{variant.slug} sets train_ks, but an any-k student is trained Serial: use mode serial")
        if not variant.train_ks or any(not isinstance(k, int) or k < 1 for k in variant.train_ks):
            raise ConfigError(
                f"train_ks {variant.train_ks} of {variant.slug}: list frame counts >= 1, e.g. [6, 10, 30]"
            )
        stray = [k for k in variant.train_every_batch or [] if k not in variant.train_ks]
        if stray:
            raise ConfigError(
                f"train_every_batch {stray} of {variant.slug} are not among its train_ks {variant.train_ks}"
            )
    elif variant.train_every_batch:
        raise ConfigError(
            f"{variant.slug} sets train_every_batch but no train_ks: list the ks to draw from, or drop it"
        )
    if variant.selection is not None:
        if variant.selection not in SELECTIONS:
            raise ConfigError(
                f"selection {variant.selection!r} of {variant.slug} is unknown: choose from {', '.join(SELECTIONS)}"
            )
        if variant.mode != "serial":
            raise ConfigError(
                f"{variant.slug} sets selection: its frame scorer learns from a trained teacher, so use mode serial"
            )
    elif variant.scorer:
        raise ConfigError(f"{variant.slug} sets scorer but no selection: add selection: skim, or drop scorer")
    if variant.train_selection is not None:
        if variant.train_selection not in BASELINES:
            raise ConfigError(
                f"train_selection {variant.train_selection!r} of {variant.slug} is unknown: choose from "
                f"{', '.join(BASELINES)}"
            )
        if variant.train_ks or variant.selection:
            raise ConfigError(
                f"{variant.slug} sets train_selection with train_ks or selection, which choose its frames already: "
                "keep one"
            )
    if variant.stop_on is not None and not variant.stop_on.startswith("val/"):
        raise ConfigError(
            f"stop_on {variant.stop_on!r} of {variant.slug} is not a validation metric: name one logged under val/, "
            "e.g. val/teacher/gap"
        )
    if variant.teachers is not None:
        if variant.mode != "serial":
            raise ConfigError(f"{variant.slug} sets teachers, but an ensemble is distilled Serial: use mode serial")
        if not variant.teachers or len(set(variant.teachers)) != len(variant.teachers):
            raise ConfigError(
                f"teachers {variant.teachers} of {variant.slug}: list each family once, e.g. [hrnn, nextvlad]"
            )


def baseline_rows(grid: Grid) -> list[Baseline]:
    """The grid's baselines, each as a ``Baseline`` (a sampler's name stands for ``Baseline(name)``)."""
    return [b if isinstance(b, Baseline) else Baseline(b) for b in grid.baselines]


def _roles(grid: Grid) -> list[str]:
    """The roles whose base configs the grid uses."""
    roles = ["teacher"] + (["baseline"] if grid.baselines else [])
    roles += sorted({SELECTIONS[selection] for selection, _ in selections(grid)})
    return roles + sorted({variant.mode for variant in grid.students})


def selections(grid: Grid) -> list[tuple[str, ConfigPart]]:
    """The frame selections (``SELECTIONS`` keys) some student variant reads by, with their scorers' settings, in
    order, each once."""
    chosen = {scorer_name(v.selection, v.scorer): (v.selection, v.scorer) for v in grid.students if v.selection}
    return list(chosen.values())


def base_config_paths(grid: Grid, role: str, family: str | None = None) -> tuple[Path, ...]:
    """The config parts of ``role`` cells: ``<configs>/role/<role>.yaml``, ``<configs>/family/<family>.yaml`` (the
    grid's family unless ``family`` is given; none for a frame scorer, which is of no family) and the grid's data
    part, if any."""
    root = Path(grid.configs)
    parts = [root / "role" / f"{role}.yaml"]
    if role not in SELECTIONS.values():
        parts.append(root / "family" / f"{family or grid.family}.yaml")
    return tuple(parts + ([root / grid.data_config] if grid.data_config else []))


def scorer_cell(seed: int, selection: str, scorer: ConfigPart) -> str:
    """The name of the cell training seed ``seed``'s frame scorer for ``selection`` with encoder settings
    ``scorer``, e.g. ``skim-s0``."""
    return f"{scorer_name(selection, scorer)}-s{seed}"


def teacher_cell(seed: int, family: str | None = None) -> str:
    """The name of the cell training seed ``seed``'s teacher: of the grid's family (``family`` None) or another."""
    return f"teacher-{family}-s{seed}" if family else f"teacher-s{seed}"


def _distils_from(grid: Grid, variant: StudentVariant, seed: int) -> tuple[str | None, tuple[str, ...]]:
    """The teacher cells a student variant distils from at ``seed``: the grid family's (None if not among its
    teachers, and for Parallel students, who train their own) and those of the other families, its ensemble."""
    if variant.mode != "serial":
        return None, ()
    families = variant.teachers or [grid.family]
    own = teacher_cell(seed) if grid.family in families else None
    return own, tuple(teacher_cell(seed, family) for family in families if family != grid.family)


def other_teacher_families(grid: Grid) -> list[str]:
    """The families other than the grid's whose teachers some student variant distils from, in order."""
    listed = [family for variant in grid.students for family in variant.teachers or []]
    return [family for family in dict.fromkeys(listed) if family != grid.family]


def expand_grid(grid: Grid) -> list[Cell]:
    """Check ``grid`` and list its cells: per seed the teacher, then baselines and students for every k.

    Serial students name their seed's teacher cell, whose checkpoint they distil from, and the seed's teacher cells
    of the other families they distil from as an ensemble (``_distils_from``); parallel students train their own
    teacher and depend on nothing. An any-k student is trained by its cell at the grid's largest k (validated there,
    where training converges last: tiny NetVLAD students stopped early at k = 6 lost 0.012 GAP at k = 30); its
    cells at the other ks name that one (``trained_by``), as a baseline of the teacher's weights names the teacher.
    """
    check_grid(grid)
    cells: list[Cell] = []
    for seed in grid.seeds:
        paths = base_config_paths(grid, "teacher")
        cells.append(Cell(teacher_cell(seed), "teacher", TEACHER_METHOD, None, seed, paths))
        for family in other_teacher_families(grid):
            paths = base_config_paths(grid, "teacher", family)
            cells.append(Cell(teacher_cell(seed, family), "teacher", teacher_method(family), None, seed, paths))
        for selection, scorer in selections(grid):
            role = SELECTIONS[selection]
            paths = base_config_paths(grid, role)
            # The scorer is a student of the teacher of no family of its own: an ensemble of one, so no head is copied.
            method = scorer_method(selection, paths[0], scorer)
            cells.append(Cell(scorer_cell(seed, selection, scorer), role, method, None, seed, paths,
                              ensemble=(teacher_cell(seed),), encoder=scorer))
        for k in grid.ks:
            for baseline in baseline_rows(grid):
                path = base_config_paths(grid, "baseline")
                trainer = teacher_cell(seed) if baseline.weights == "teacher" else None
                cells.append(Cell(f"{baseline.slug}-k{k}-s{seed}", "baseline", baseline.label, k, seed, path,
                                  sampler=baseline.sampler, train_sampler=baseline.train_selection, trained_by=trainer))
            for variant in grid.students:
                largest = max(grid.ks)
                trainer = f"{variant.slug}-k{largest}-s{seed}" if variant.train_ks and k != largest else None
                own_teacher, ensemble = _distils_from(grid, variant, seed)
                cells.append(
                    Cell(
                        name=f"{variant.slug}-k{k}-s{seed}",
                        role=variant.mode,
                        method=variant.label,
                        k=k,
                        seed=seed,
                        base_configs=base_config_paths(grid, variant.mode),
                        # The paper's students all see Uniform-k frames; a selection's students, its scorer's choice.
                        sampler=None if variant.selection else "uniform",
                        train_sampler=variant.train_selection,
                        variant=variant,
                        teacher=own_teacher,
                        trained_by=trainer,
                        ensemble=ensemble,
                        scorer=scorer_cell(seed, variant.selection, variant.scorer) if variant.selection else None,
                    )
                )
    return _after_what_they_wait_for(cells)


def _after_what_they_wait_for(cells: list[Cell]) -> list[Cell]:
    """``cells`` in their order, except that a cell moves after the cells it waits for (an any-k student's cells
    at smaller k wait for its trainer at the largest), as the runner's fingerprints need."""
    ordered: list[Cell] = []
    placed: set[str] = set()
    pending = cells
    while pending:
        waiting = []
        for cell in pending:
            if set(cell.waits_for) <= placed:
                ordered.append(cell)
                placed.add(cell.name)
            else:
                waiting.append(cell)
        if len(waiting) == len(pending):
            raise ConfigError(f"cells {[cell.name for cell in waiting]} wait for cells the grid does not make")
        pending = waiting
    return ordered


def row_labels(grid: Grid) -> list[str]:
    """The report's rows in Table 1's order: baselines, then teacher-student variants, as listed in the grid."""
    return [b.label for b in baseline_rows(grid)] + [variant.label for variant in grid.students]

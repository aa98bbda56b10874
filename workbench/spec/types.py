"""The spec's types: one dataclass per section, each field with its default and meaning, and the
checks of values that need no registry.

Every error names the field at fault (``trainer.max_epochs: expected int, got 'ten'``) and is
raised before any data is read or any run is opened.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

# A checkpoint given as "study:NAME" means the best trial's checkpoint of study NAME in the same
# storage (resolved by ``workbench.study.run_study``), e.g. a distillation teacher or GAN judge.
STUDY_REFERENCE = "study:"
LOG_MODELS = ("best", "all")  # tracking.log_models
DATA_POLICIES = ("raw", "synthetic", "none")  # tracking.data_policy
# study.extra_objectives; robust/val_acc: PGD accuracy at robustness.objective_epsilon on the
# validation split
EXTRA_OBJECTIVES = ("params/count", "latency/batch1_ms", "robust/val_acc")
FREEZE_RULE = re.compile(r"all|none|first_[1-9][0-9]*")  # backbone.freeze
RUN_ID_RULE = re.compile(r"[0-9a-f]{8,64}")  # MLflow run ids are 32 hex digits
# Study, experiment and registered-model names become MLflow filter values, Optuna keys and
# directory names: one rule for all of them, checked before any store is opened.
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE_TEXT = (
    "a name is 1 to 100 characters: letters, digits, '_', '-' and '.', starting with a letter "
    "or digit, without '..'"
)


class SpecError(ValueError):
    """A spec field is unknown, of the wrong type or holds an impossible value."""


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise SpecError(f"{where}: {message}")


def check_name(value: Any, where: str) -> str:
    """Refuse a name outside ``NAME_RULE`` (quotes, slashes, ``..``, spaces, overlong names)."""
    ok = isinstance(value, str) and NAME_RULE.fullmatch(value) is not None and ".." not in value
    _require(ok, where, f"{NAME_RULE_TEXT}; got {value!r}")
    return value


@dataclass
class DataSpec:
    name: str = "mnist_subset"
    """Registered data family (``workbench.available_data()``)."""
    path: str | None = None
    """Directory of IDX files (``idx`` data only)."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    batch_size: int = 128
    augment: bool = False
    """Small random shifts and rotations of training images, on the batch's device."""
    max_samples: int | None = None
    """Stratified subsample before splitting: tiny runs for tests and notebooks."""
    on_device: bool = True
    """Keep the in-memory splits on the model's device and batch them there (no DataLoader)."""
    normalize: bool = True
    """Standardise inputs with statistics of the training split; off keeps [0, 1] pixels."""
    split_seed: int | None = None
    """Seed of the subsample and the train/val/test split; null: the spec's ``seed``. Fixing it
    while the seed varies keeps one split (the same test images) across seeds."""
    labels_per_class: int | None = None
    """Keep this many labelled examples per class in the training split, and as many in the
    validation split (seeded by ``seed``, after splitting; the test split stays whole):
    few-label experiments."""
    options: dict[str, Any] = field(default_factory=dict)
    """Arguments of the data family itself, e.g. ``{length: 100}`` for ``adding``."""
    identifiers: list[str] = field(default_factory=list)
    """Table columns that identify a person (name, e-mail, record number): dropped as the table
    is read, before training and logging, whatever the policy: they never reach the store."""
    hash_identifiers: bool = False
    """Accepted for a salted-hash key; nothing in training uses a per-row key, so the columns are
    dropped either way."""
    quasi_identifiers: dict[str, int] = field(default_factory=dict)
    """Table columns that identify in combination (age, postcode): column → number of
    equal-frequency bins each is generalised into before training."""
    k_anonymity: int | None = None
    """Every combination of the (generalised) quasi-identifiers must be shared by at least k rows;
    checked before any training, an error names the columns and k."""

    def check(self) -> None:
        if self.k_anonymity is not None:
            _require(self.k_anonymity >= 2, "data.k_anonymity", "must be >= 2 (or null)")
            _require(
                bool(self.quasi_identifiers),
                "data.k_anonymity",
                "needs data.quasi_identifiers (the columns whose combinations it counts)",
            )
        for column, bins in self.quasi_identifiers.items():
            _require(bins >= 1, f"data.quasi_identifiers.{column}", "bins must be >= 1")
        overlap = set(self.identifiers) & set(self.quasi_identifiers)
        _require(
            not overlap,
            "data.identifiers",
            f"{sorted(overlap)} also listed in data.quasi_identifiers",
        )
        if self.labels_per_class is not None:
            _require(self.labels_per_class >= 1, "data.labels_per_class", "must be >= 1 (or null)")
        _require(0 < self.val_fraction < 0.5, "data.val_fraction", "must be in (0, 0.5)")
        _require(0 < self.test_fraction < 0.5, "data.test_fraction", "must be in (0, 0.5)")
        _require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        if self.max_samples is not None:
            _require(self.max_samples >= 20, "data.max_samples", "must be >= 20 (or null)")


@dataclass
class ModelSpec:
    name: str = "cnn"
    """Registered architecture (``workbench.available_models()``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Fixed constructor arguments; the search space overrides them per trial."""


@dataclass
class BackboneSpec:
    """A pretrained backbone to start from (``model.name: transfer``), and how to fine-tune it.
    ``freeze``, ``lr_factor`` and ``unfreeze_every`` can be searched (``backbone.freeze`` in
    ``search_space``) and also reach models that ship their own pretrained weights."""

    source: str | None = None
    """``study:NAME`` (its champion), ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, an MLflow
    run id, or a ``.ckpt`` file (with ``model``); null trains from scratch."""
    model: str | None = None
    """The registered architecture a ``.ckpt`` source holds."""
    pretrained: bool = True
    """False: the backbone's architecture with random weights (the from-scratch baseline)."""
    freeze: str = "none"
    """``all``, ``none`` or ``first_N``: backbone blocks frozen, from the input up."""
    lr_factor: float = 1.0
    """The backbone's learning rate as a factor of the head's (``lr``)."""
    unfreeze_every: int = 0
    """Gradual unfreezing: one more frozen block (top down) trains every N epochs; 0: never."""

    def check(self) -> None:
        _require(
            isinstance(self.freeze, str) and FREEZE_RULE.fullmatch(self.freeze) is not None,
            "backbone.freeze",
            f"must be all, none or first_N (N >= 1); got {self.freeze!r}",
        )
        _require(self.lr_factor > 0, "backbone.lr_factor", f"must be > 0; got {self.lr_factor}")
        _require(
            self.unfreeze_every >= 0,
            "backbone.unfreeze_every",
            f"must be >= 0 (0: never); got {self.unfreeze_every}",
        )
        if self.source is None:
            return
        source = self.source
        if source.startswith(STUDY_REFERENCE):
            check_name(source[len(STUDY_REFERENCE) :], "backbone.source")
        elif source.endswith(".ckpt"):
            _require(
                self.model is not None,
                "backbone.model",
                f"a checkpoint source ({source}) needs the architecture it holds",
            )
        else:
            _require(
                source.startswith(("models:/", "runs:/")) or RUN_ID_RULE.fullmatch(source),
                "backbone.source",
                "expected study:NAME, models:/NAME@ALIAS, models:/NAME/VERSION, an MLflow run "
                f"id or a .ckpt file; got {source!r}",
            )


@dataclass
class TrainerSpec:
    max_epochs: int = 10
    patience: int = 3
    """Early stopping: epochs without improvement of ``study.metric``."""
    accelerator: str = "auto"
    devices: int = 1
    """Processes one trial trains on (one device each); more than 1 needs ``strategy: ddp``."""
    strategy: str = "auto"
    """``auto`` (one process) or ``ddp``: ``devices`` processes on this machine, each with its
    shard of every split (CPU/gloo; see docs/scaling.md)."""
    precision: str = "auto"
    """``auto``: bf16 autocast on a GPU that supports it, else float32; or a Lightning value."""
    matmul_precision: str = "auto"
    """float32 matmuls: ``auto`` (``high``, TF32, on CUDA), ``highest``, ``high``, ``medium``."""
    compile: str = "off"
    """``torch.compile`` mode: ``off``, ``default``, ``reduce-overhead``, ``max-autotune``."""
    progress_bar: bool = False
    """Lightning's per-epoch bar; off by default in studies, which show one bar over trials."""
    deterministic: bool = False
    """torch's deterministic algorithms (``Trainer(deterministic=True)``): the same machine gives
    the same numbers on a rerun (``workbench reproduce``) at some cost in speed on a GPU."""

    def check(self) -> None:
        _require(self.max_epochs >= 1, "trainer.max_epochs", "must be >= 1")
        _require(self.patience >= 1, "trainer.patience", "must be >= 1")
        _require(
            self.accelerator in {"auto", "cpu", "gpu", "cuda", "mps"},
            "trainer.accelerator",
            f"must be one of auto, cpu, gpu, cuda, mps; got {self.accelerator!r}",
        )
        _require(self.devices >= 1, "trainer.devices", f"must be >= 1; got {self.devices}")
        _require(
            self.strategy in {"auto", "ddp"},
            "trainer.strategy",
            f"must be auto or ddp; got {self.strategy!r}",
        )
        _require(
            self.devices == 1 or self.strategy == "ddp",
            "trainer.devices",
            f"{self.devices} processes need trainer.strategy: ddp",
        )
        _require(
            self.matmul_precision in {"auto", "highest", "high", "medium"},
            "trainer.matmul_precision",
            f"must be auto, highest, high or medium; got {self.matmul_precision!r}",
        )
        _require(
            self.compile in {"off", "default", "reduce-overhead", "max-autotune"},
            "trainer.compile",
            f"must be off, default, reduce-overhead or max-autotune; got {self.compile!r}",
        )
        precisions = {
            "auto",
            "32-true",
            "32",
            "16-mixed",
            "bf16-mixed",
            "bf16-true",
            "16-true",
            "64-true",
        }
        _require(
            self.precision in precisions,
            "trainer.precision",
            f"must be one of {', '.join(sorted(precisions))}; got {self.precision!r}",
        )


@dataclass
class ConfirmSpec:
    """After the search, the ``top_k`` best configurations are trained again with ``seeds`` fresh
    seeds (initialisation and data order); the champion is the best confirmed mean validation
    score. ``top_k: 0`` (the default) confirms nothing."""

    top_k: int = 0
    seeds: int = 3
    resplit: bool = False
    """Each seed also draws its own train/val/test split (off: the search's split is kept)."""

    def check(self) -> None:
        _require(self.top_k >= 0, "study.confirm.top_k", f"must be >= 0; got {self.top_k}")
        _require(self.seeds >= 2, "study.confirm.seeds", f"must be >= 2; got {self.seeds}")


@dataclass
class TargetSpec:
    """What the study's result should reach, e.g. ``{metric: test/acc, at_least: 0.98}``; the
    results table (``workbench results``) says whether the confirmed interval reaches it."""

    metric: str | None = None
    at_least: float | None = None
    at_most: float | None = None

    def check(self) -> None:
        if self.metric is None:
            for name in ("at_least", "at_most"):
                _require(
                    getattr(self, name) is None,
                    f"study.target.{name}", "a bound needs study.target.metric",
                )  # fmt: skip
            return
        _require("/" in self.metric, "study.target.metric", "reads 'stage/metric'")
        _require(
            (self.at_least is None) != (self.at_most is None),
            "study.target", "give exactly one of at_least, at_most",
        )  # fmt: skip


@dataclass
class StudySpec:
    trials: int = 10
    """Total finished trials (complete + pruned) the study aims for; a resume runs the rest."""
    metric: str = "val/acc"
    direction: str = "maximize"
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    progress_bar: bool = True
    """One bar over the study's trials, with a line per finished trial."""
    extra_objectives: dict[str, str] = field(default_factory=dict)
    """Further objectives, e.g. ``{params/count: minimize}``: a multi-objective study (NSGA-II)."""
    workers: int = 1
    """Worker processes on this machine sharing the study's storage."""
    heartbeat_s: int = 15
    """Trial heartbeat; a trial silent for 4 heartbeats (a killed worker) is failed and retried."""
    retries: int = 1
    """How many times a trial whose worker died is re-queued with the same parameters."""
    allow_repeats: bool = False
    """Run a drawn configuration that a finished trial already ran (off: the trial is skipped,
    recorded PRUNED with the reason)."""
    confirm: ConfirmSpec = field(default_factory=ConfirmSpec)
    """Confirmation over seeds of the best configurations, after the search."""
    target: TargetSpec = field(default_factory=TargetSpec)
    """What the result should reach (reported by ``workbench results``)."""

    def check(self) -> None:
        self.confirm.check()
        self.target.check()
        _require(self.trials >= 1, "study.trials", "must be >= 1")
        _require(self.workers >= 1, "study.workers", "must be >= 1")
        _require(self.heartbeat_s >= 1, "study.heartbeat_s", "must be >= 1")
        _require(self.retries >= 0, "study.retries", "must be >= 0")
        for name, direction in self.extra_objectives.items():
            _require(
                name in EXTRA_OBJECTIVES,
                f"study.extra_objectives.{name}",
                f"supported: {', '.join(EXTRA_OBJECTIVES)}",
            )
            _require(
                direction in {"maximize", "minimize"},
                f"study.extra_objectives.{name}",
                f"must be 'maximize' or 'minimize'; got {direction!r}",
            )
        if self.extra_objectives:
            _require(
                self.pruner == "none",
                "study.pruner",
                "Optuna cannot prune a multi-objective study: use pruner: none",
            )
        _require(
            self.direction in {"maximize", "minimize"},
            "study.direction",
            f"must be 'maximize' or 'minimize'; got {self.direction!r}",
        )
        _require("/" in self.metric, "study.metric", "reads 'stage/metric', e.g. 'val/acc'")


@dataclass
class TrackingSpec:
    root: str = "mlruns"
    """Everything a run generates: MLflow and Optuna databases, artifacts, checkpoints."""
    mlflow_uri: str | None = None
    """Defaults to ``sqlite:///<root>/mlflow.db``; an ``http://`` tracking server also works."""
    optuna_storage: str | None = None
    """Defaults to ``sqlite:///<root>/optuna.db``; a ``postgresql://`` URL also works."""
    experiment: str = "workbench"
    register_as: str | None = None
    """Model Registry name for the study's best model; defaults to the spec name."""
    log_models: str = "best"
    """``best``: the champion's model and figures are logged into its run when the study ends
    (from its checkpoint), so a trial costs no model export; ``all``: every trial's, as it ends."""

    report: bool = True
    """Write the study's HTML report (``<root>/reports/<name>.html``, and ``report.html`` in its
    parent run) when the study ends; ``workbench report NAME`` writes it at any time."""
    review: bool = True
    """When the study ends, give each finished trial and the study a note in optuna-dashboard
    (metrics, how it ended, figures, a link to its MLflow run) and each MLflow run a description
    linking back (``workbench/study/review.py``); ``workbench ui`` and ``workbench review`` do it
    again with the addresses the UIs listen on."""
    data_policy: str = "raw"
    """What of the data may reach the store (input examples of logged models, explanation
    arrays and figures, sample grids): ``raw`` (as it is), ``synthetic`` (same schema and shape,
    values that are no data row), ``none`` (nothing). Runs are tagged with it."""

    def check(self) -> None:
        _require(
            self.data_policy in DATA_POLICIES,
            "tracking.data_policy",
            f"must be one of {', '.join(DATA_POLICIES)}; got {self.data_policy!r}",
        )
        _require(
            self.log_models in LOG_MODELS,
            "tracking.log_models",
            f"must be one of {', '.join(LOG_MODELS)}; got {self.log_models!r}",
        )


ATTACKS = ("fgsm", "pgd", "square")
ADVERSARIAL_TRAINING = ("none", "pgd", "fgsm_rs")


@dataclass
class RobustnessSpec:
    """Adversarial evaluation and training. Attacks run in the input's natural scale ([0, 1]
    pixels; table features min–max scaled over the training split), the model in eval mode."""

    evaluate: bool = False
    """Attack every trial's model on the test split after training (the champion is attacked
    whenever this is on; ``workbench attack RUN_ID`` attacks any run)."""
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    epsilons: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3])
    pgd_steps: int = 20
    pgd_restarts: int = 1
    n_examples: int = 500
    """Test examples attacked (the first n of the test split)."""
    train: str = "none"
    """Adversarial training: ``none``, ``pgd`` (Madry et al. 2018) or ``fgsm_rs`` (fast FGSM with
    a random start, Wong et al. 2020)."""
    epsilon: float = 0.1
    """Training ε, in the natural scale; searchable as ``robustness.epsilon``."""
    mix: float = 0.5
    """Share of each training batch replaced by its adversarial version; searchable."""
    train_steps: int = 7
    """PGD steps per training batch (``train: pgd``)."""
    objective_epsilon: float = 0.1
    """The PGD radius of the ``robust/val_acc`` objective (``study.extra_objectives``), fixed
    while the training ``epsilon`` is searched."""

    def check(self) -> None:
        for attack in self.attacks:
            _require(
                attack in ATTACKS,
                "robustness.attacks",
                f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}",
            )
        _require(bool(self.epsilons), "robustness.epsilons", "must list at least one ε")
        for eps in self.epsilons:
            _require(0 <= eps <= 1, "robustness.epsilons", f"each ε must be in [0, 1]; got {eps}")
        _require(self.pgd_steps >= 1, "robustness.pgd_steps", "must be >= 1")
        _require(self.pgd_restarts >= 1, "robustness.pgd_restarts", "must be >= 1")
        _require(self.n_examples >= 1, "robustness.n_examples", "must be >= 1")
        _require(
            self.train in ADVERSARIAL_TRAINING,
            "robustness.train",
            f"must be one of {', '.join(ADVERSARIAL_TRAINING)}; got {self.train!r}",
        )
        _require(
            0 < self.epsilon <= 1, "robustness.epsilon", f"must be in (0, 1]; got {self.epsilon}"
        )
        _require(0 <= self.mix <= 1, "robustness.mix", f"must be in [0, 1]; got {self.mix}")
        _require(self.train_steps >= 1, "robustness.train_steps", "must be >= 1")
        _require(
            0 < self.objective_epsilon <= 1,
            "robustness.objective_epsilon",
            f"must be in (0, 1]; got {self.objective_epsilon}",
        )


@dataclass
class PrivacySpec:
    """Differentially private training (DP-SGD through Opacus): on when ``epsilon`` is set."""

    epsilon: float | None = None
    """The privacy budget to spend over the whole training (target ε)."""
    delta: float | None = None
    """Required with ``epsilon``; must be below 1 / (training rows), checked with the data."""
    max_grad_norm: float = 1.0
    """Per-example gradient clipping norm."""
    accountant: str = "prv"
    """Opacus' accountant: ``prv`` (default), ``rdp`` or ``gdp``."""

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None

    def check(self) -> None:
        if self.epsilon is None:
            _require(self.delta is None, "privacy.delta", "set privacy.epsilon too (or neither)")
            return
        _require(self.epsilon > 0, "privacy.epsilon", f"must be > 0; got {self.epsilon}")
        _require(
            self.delta is not None,
            "privacy.delta",
            "required with privacy.epsilon (below 1 / the number of training rows, e.g. 1e-5)",
        )
        _require(0 < self.delta < 1, "privacy.delta", f"must be in (0, 1); got {self.delta}")
        _require(self.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
        _require(
            self.accountant in {"prv", "rdp", "gdp"},
            "privacy.accountant",
            f"must be prv, rdp or gdp; got {self.accountant!r}",
        )


@dataclass
class ExplainSpec:
    enabled: bool = True
    n_images: int = 4
    background: int = 64
    """SHAP background drawn from the training split."""
    shap_samples: int = 200
    lime_samples: int = 1000

    def check(self) -> None:
        _require(self.n_images >= 1, "explain.n_images", "must be >= 1")
        _require(self.background >= 1, "explain.background", "must be >= 1")
        _require(self.lime_samples >= 10, "explain.lime_samples", "must be >= 10")
        _require(self.shap_samples >= 1, "explain.shap_samples", "must be >= 1")


@dataclass
class ParamSpec:
    """One searched hyperparameter: ``float``/``int`` ranges or ``categorical`` choices."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def check(self, where: str) -> None:
        _require(
            self.type in {"float", "int", "categorical"},
            f"{where}.type",
            f"must be float, int or categorical; got {self.type!r}",
        )
        if self.type == "categorical":
            _require(bool(self.choices), f"{where}.choices", "a categorical needs choices")
            return
        _require(self.low is not None and self.high is not None, where, "needs low and high")
        _require(self.low < self.high, where, f"low ({self.low}) must be < high ({self.high})")
        if self.log:
            _require(self.low > 0, f"{where}.low", "must be > 0 when log: true")
            _require(self.step is None, f"{where}.step", "cannot be combined with log: true")


@dataclass
class ExperimentSpec:
    name: str
    """Study name in Optuna and MLflow; re-running the same name resumes it."""
    seed: int = 42
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    study: StudySpec = field(default_factory=StudySpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    explain: ExplainSpec = field(default_factory=ExplainSpec)
    robustness: RobustnessSpec = field(default_factory=RobustnessSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    """Keys are model constructor arguments, or dotted spec fields such as ``data.batch_size``."""

    def check(self) -> None:
        check_name(self.name, "name")
        _require(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32); got {self.seed}")
        check_name(self.tracking.experiment, "tracking.experiment")
        if self.tracking.register_as is not None:
            check_name(self.tracking.register_as, "tracking.register_as")
        for key, value in self.model.params.items():
            if key.endswith("checkpoint") and str(value).startswith(STUDY_REFERENCE):
                check_name(str(value)[len(STUDY_REFERENCE) :], f"model.params.{key}")
        parts = (
            self.data,
            self.backbone,
            self.trainer,
            self.study,
            self.tracking,
            self.explain,
            self.robustness,
            self.privacy,
        )
        for part in parts:
            part.check()
        for key, param in self.search_space.items():
            param.check(f"search_space.{key}")

    def split_seed(self) -> int:
        """The seed of the train/val/test split: ``data.split_seed``, else ``seed``."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

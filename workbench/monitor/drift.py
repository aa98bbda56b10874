"""Two-sample drift tests between a reference (what the model saw at training time) and a batch
of new inputs, on plain arrays: the statistics are scipy's, the permutation MMD is short.

- ``ks``: a two-sample Kolmogorov–Smirnov test per input feature (pixel, column), Bonferroni-
  corrected over the features that vary; its p-value is the smallest corrected one.
- ``psi``: the population stability index per feature over the reference's decile bins, averaged
  over the features that vary. Descriptive (no p-value); it flags above 0.25, the usual bar.
- ``mmd``: maximum mean discrepancy with an RBF kernel (median-heuristic bandwidth on the pooled
  sample) on the model's own embeddings, with a permutation p-value.
- ``chi2``: chi² test of the predicted-class counts against the reference's.
- ``confidence``: one-sided Mann–Whitney U test that the top-class probability fell.

``drifted`` is Bonferroni over the four tests: any p-value below alpha / 4. The false-alarm rate
and power of each test are measured in ``workbench.monitor.power``, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

TESTS = ("ks", "mmd", "chi2", "confidence")  # the hypothesis tests (psi is descriptive)
PSI_BAR = 0.25  # "significant shift" in the PSI literature
# Features are compared at 5 decimals: a value normalised twice (in float32 here, in float64 by a
# client) differs in the 7th digit, and the KS test would call every tied background pixel moved.
DECIMALS = 5


@dataclass
class Sample:
    """What a drift test sees of a set of inputs: the inputs flattened to features, the model's
    embeddings (the input of its last linear layer) and, for a classifier, the predicted class and
    its probability."""

    features: np.ndarray  # (n, d)
    embeddings: np.ndarray  # (n, e)
    classes: np.ndarray | None = None  # (n,) int
    confidence: np.ndarray | None = None  # (n,) top-class probability

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows: np.ndarray) -> Sample:
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Sample(
            self.features[rows], self.embeddings[rows], pick(self.classes), pick(self.confidence)
        )


@dataclass
class DriftResult:
    """One batch against the reference: each test's p-value and statistic, and the verdicts."""

    n: int
    alpha: float
    p_values: dict[str, float] = field(default_factory=dict)
    statistics: dict[str, float] = field(default_factory=dict)

    @property
    def flags(self) -> dict[str, bool]:
        """Each test at level alpha on its own (what its false-alarm rate is measured for)."""
        out = {name: p < self.alpha for name, p in self.p_values.items() if not np.isnan(p)}
        out["psi"] = self.statistics.get("psi", 0.0) > PSI_BAR
        return out

    @property
    def drifted(self) -> bool:
        """Any of the hypothesis tests below alpha / (number of tests): one family-wise verdict."""
        tested = [p for p in self.p_values.values() if not np.isnan(p)]
        return bool(tested) and min(tested) * len(tested) < self.alpha

    def metrics(self, prefix: str = "drift") -> dict[str, float]:
        out = {f"{prefix}/n": float(self.n), f"{prefix}/drifted": float(self.drifted)}
        out.update({f"{prefix}/{k}_p": v for k, v in self.p_values.items() if not np.isnan(v)})
        out.update({f"{prefix}/{k}": v for k, v in self.statistics.items() if not np.isnan(v)})
        return out


class DriftDetector:
    """Fitted once on a reference ``Sample``; ``check(batch)`` runs every test on a batch."""

    def __init__(
        self, reference: Sample, alpha: float = 0.05, permutations: int = 200, seed: int = 0
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha: must lie in (0, 1), got {alpha}")
        if permutations < 19:
            raise ValueError(
                f"permutations: at least 19 for a p-value below 0.05, got {permutations}"
            )
        if len(reference) < 10:
            raise ValueError(f"reference: at least 10 rows needed, got {len(reference)}")
        self.reference, self.alpha, self.permutations = reference, alpha, permutations
        self.rng = np.random.default_rng(seed)
        features = self._rounded = np.round(reference.features, DECIMALS)
        self._varies = features.max(axis=0) > features.min(axis=0)
        self._bins = [_decile_edges(column) for column in features[:, self._varies].T]
        self.num_classes = None
        if reference.classes is not None:
            self.num_classes = int(reference.classes.max()) + 1

    def check(self, batch: Sample) -> DriftResult:
        if batch.features.shape[1:] != self.reference.features.shape[1:]:
            raise ValueError(
                f"inputs: {batch.features.shape[1]} features per row, the reference has "
                f"{self.reference.features.shape[1]}"
            )
        if len(batch) < 2:
            raise ValueError(f"inputs: at least 2 rows needed for a drift test, got {len(batch)}")
        result = DriftResult(n=len(batch), alpha=self.alpha)
        p, drifted_features = self._ks(batch.features)
        result.p_values["ks"] = p
        result.statistics["ks_features"] = float(drifted_features)
        result.statistics["psi"] = self._psi(batch.features)
        mmd2, p = mmd_test(self.reference.embeddings, batch.embeddings, self.permutations, self.rng)
        result.p_values["mmd"], result.statistics["mmd2"] = p, mmd2
        if self.reference.classes is not None and batch.classes is not None:
            result.p_values["chi2"] = self._chi2(batch.classes)
            drop, p = confidence_drop(self.reference.confidence, batch.confidence)
            result.p_values["confidence"], result.statistics["confidence_drop"] = p, drop
        return result

    def _ks(self, features: np.ndarray) -> tuple[float, int]:
        """Bonferroni over the features that vary in the reference or the batch."""
        varies = self._varies | (features.max(axis=0) > features.min(axis=0))
        if not varies.any():
            return 1.0, 0
        statistic = ks_statistics(self._rounded[:, varies], np.round(features[:, varies], DECIMALS))
        # The p-value falls as the statistic grows: the smallest is the largest statistic's, and
        # the features below alpha / tests are those above one critical value.
        tests, effective_n = int(varies.sum()), ks_effective_n(len(self._rounded), len(features))
        smallest = float(stats.kstwo.sf(statistic.max(), effective_n))
        critical = stats.kstwo.isf(self.alpha / tests, effective_n)
        return min(smallest * tests, 1.0), int((statistic > critical).sum())

    def _psi(self, features: np.ndarray) -> float:
        if not self._bins:
            return 0.0
        ref = self._rounded[:, self._varies]
        new = np.round(features[:, self._varies], DECIMALS)
        values = [psi(ref[:, j], new[:, j], edges) for j, edges in enumerate(self._bins)]
        return float(np.mean(values))

    def _chi2(self, classes: np.ndarray) -> float:
        ref = np.bincount(self.reference.classes, minlength=self.num_classes)
        new = np.bincount(classes, minlength=self.num_classes)[: len(ref)]
        seen = (ref + new) > 0
        if seen.sum() < 2:
            return 1.0
        return float(stats.chi2_contingency(np.stack([ref[seen], new[seen]])).pvalue)


def ks_test(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sample KS p-values column by column, as ``scipy.stats.ks_2samp(method="asymp")``
    gives them (which loops over the columns in Python: 0.2 s for 784 pixels)."""
    return stats.kstwo.sf(ks_statistics(x, y), ks_effective_n(len(x), len(y)))


def ks_effective_n(n: int, m: int) -> int:
    return int(np.round(n * m / (n + m)))


def ks_statistics(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sample KS statistics column by column in one pass: the largest gap between both
    samples' empirical CDFs over the pooled values (ties counted once)."""
    n, m = len(x), len(y)
    pooled = np.concatenate([x, y])
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    from_x = order < n
    gap = np.abs(np.cumsum(from_x, axis=0) / n - np.cumsum(~from_x, axis=0) / m)
    last_of_tie = np.ones_like(from_x)
    last_of_tie[:-1] = values[1:] != values[:-1]
    return np.where(last_of_tie, gap, 0.0).max(axis=0)


def _decile_edges(column: np.ndarray) -> np.ndarray:
    edges = np.unique(np.quantile(column, np.linspace(0, 1, 11)))
    return edges[1:-1]  # inner edges; the outer bins reach to ±infinity


def psi(reference: np.ndarray, new: np.ndarray, inner_edges: np.ndarray) -> float:
    """Population stability index: sum over bins of (new% - ref%) * ln(new% / ref%), with each
    share floored at 1e-4 so that an empty bin is large, not infinite."""
    ref = np.bincount(
        np.searchsorted(inner_edges, reference, side="right"), minlength=len(inner_edges) + 1
    )
    now = np.bincount(
        np.searchsorted(inner_edges, new, side="right"), minlength=len(inner_edges) + 1
    )
    ref = np.maximum(ref / ref.sum(), 1e-4)
    now = np.maximum(now / now.sum(), 1e-4)
    return float(np.sum((now - ref) * np.log(now / ref)))


def mmd_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 200, rng: np.random.Generator | None = None
) -> tuple[float, float]:
    """Squared MMD (biased V-statistic, RBF kernel, median-heuristic bandwidth over the pooled
    sample) and its permutation p-value ``(1 + #{permuted >= observed}) / (1 + permutations)``."""
    rng = rng or np.random.default_rng(0)
    pooled = torch.from_numpy(np.concatenate([x, y]).astype(np.float64))
    squared = torch.cdist(pooled, pooled).square()
    off_diagonal = squared[~torch.eye(len(pooled), dtype=torch.bool)]
    bandwidth = float(off_diagonal.median()) or 1.0
    kernel = torch.exp(-squared / bandwidth)
    n, m = len(x), len(y)

    def statistic(signs: torch.Tensor) -> torch.Tensor:  # rows of +1/n (x) and -1/m (y)
        return ((signs @ kernel) * signs).sum(dim=1)

    observed = torch.cat([torch.full((n,), 1.0 / n), torch.full((m,), -1.0 / m)]).double()
    orders = np.argsort(rng.random((permutations, n + m)), axis=1)
    permuted = observed[torch.from_numpy(orders)]
    value = float(statistic(observed[None])[0])
    null = statistic(permuted).numpy()
    return value, float((1 + np.sum(null >= value - 1e-12)) / (1 + permutations))


def confidence_drop(reference: np.ndarray, new: np.ndarray) -> tuple[float, float]:
    """Mean top-class probability of the reference minus the batch's, and the one-sided
    Mann–Whitney U p-value for "the batch's confidence is lower"."""
    drop = float(np.mean(reference) - np.mean(new))
    if np.ptp(np.concatenate([reference, new])) == 0:
        return drop, 1.0
    return drop, float(stats.mannwhitneyu(reference, new, alternative="greater").pvalue)


def sample_of(network: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 512) -> Sample:
    """Run ``network`` (eval mode, no gradients) over ``inputs``: the features, its embeddings
    (the input of its last ``nn.Linear``; the flattened outputs when it has none) and, when its
    outputs are class scores, the predicted class and the softmax top probability."""
    last_linear = [m for m in network.modules() if isinstance(m, torch.nn.Linear)]
    captured: list[torch.Tensor] = []
    hook = None
    if last_linear:
        hook = last_linear[-1].register_forward_hook(
            lambda _module, args, _output: captured.append(args[0].detach().flatten(1))
        )
    outputs = []
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size].to(device)
                outputs.append(network(chunk).float().flatten(1).cpu())
    finally:
        if hook is not None:
            hook.remove()
        network.train(was_training)
    out = torch.cat(outputs)
    embeddings = torch.cat(captured).float().cpu() if captured else out
    sample = Sample(inputs.flatten(1).float().cpu().numpy(), embeddings.numpy())
    if out.shape[1] > 1:  # class scores
        probabilities = out.softmax(dim=1)
        confidence, classes = probabilities.max(dim=1)
        sample.classes, sample.confidence = classes.numpy(), confidence.numpy()
    return sample

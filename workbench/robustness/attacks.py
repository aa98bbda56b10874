"""Adversarial evaluation with torchattacks: robust accuracy under FGSM, PGD (and Square) over a
list of ε, in the input's natural scale, with the signs of gradient masking checked.

Normalisation belongs inside the model: ``NaturalScale`` wraps a network that takes normalised
inputs into one that takes the natural scale — [0, 1] pixels for images (ε means what papers mean
by it), each table feature min–max scaled over the training split — so an attack's ε and its
clamp to [0, 1] are the same for every model. The model is in eval mode while it is attacked.

The masking checks (Athalye et al. 2018; Carlini et al. 2019): PGD never weaker than FGSM,
accuracy non-increasing in ε, more PGD steps or restarts never raising it, and accuracy near 0 at a
large ε (0.5 lets PGD turn any input into a flat grey one). A model that fails one is not shown to
be robust: its gradients may simply not point anywhere useful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

LARGE_EPSILON = 0.5  # "accuracy near 0 at a large ε"
NEAR_ZERO = 0.1
TOLERANCE = 0.01  # accuracy differences below this are noise (one example in 100)


class NaturalScale(nn.Module):
    """``net`` taking inputs in the natural scale: ``net(natural * scale + shift)``."""

    def __init__(self, net: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, natural: torch.Tensor) -> torch.Tensor:
        return self.net(natural * self.scale + self.shift)

    def to_natural(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs back to the natural scale, clipped to [0, 1]."""
        return ((inputs - self.shift) / self.scale).clamp(0.0, 1.0)

    def to_inputs(self, natural: torch.Tensor) -> torch.Tensor:
        return natural * self.scale + self.shift


def natural_scale(net: nn.Module, data) -> NaturalScale:
    """``net`` behind the natural scale of ``data``'s inputs: images (N, 1, H, W) in [0, 1]
    pixels through the data module's normalisation; tables (N, F) min–max over the training
    split. Sequences, text and environments are refused (their inputs have no [0, 1] scale)."""
    train = data.split("train")[0]
    if train.ndim == 4 and hasattr(data, "mean_"):  # images: one mean and std for all pixels
        std, mean = float(data.std_), float(data.mean_)
        scale, shift = torch.tensor(1.0 / std), torch.tensor(-mean / std)
    elif train.ndim == 2 and train.dtype.is_floating_point:  # tables, in model-input units
        low, high = train.min(dim=0).values, train.max(dim=0).values
        scale, shift = (high - low).clamp_min(1e-12), low
    else:
        raise ValueError(
            f"robustness: attacks need image or table inputs; this data's inputs are shaped "
            f"{tuple(train.shape[1:])} ({train.dtype})"
        )
    return NaturalScale(net, scale.float(), shift.float())


def make_attack(name: str, model: nn.Module, eps: float, steps: int = 20, seed: int = 0):
    """A torchattacks attack on ``model`` (natural scale), L∞ radius ``eps``."""
    import torchattacks

    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(
            model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True
        )
    if name == "fgsm_rs":  # fast adversarial training (Wong et al. 2020): α = 1.25 ε
        return torchattacks.FFGSM(model, eps=eps, alpha=1.25 * eps)
    if name == "square":
        return torchattacks.Square(model, eps=eps, n_queries=500, n_restarts=1, seed=seed)
    raise ValueError(f"robustness.attacks: unknown attack {name!r}")


@dataclass
class RobustnessReport:
    """Accuracy under each attack at each ε (``accuracy[attack][i]`` at ``epsilons[i]``), the
    extra runs of the masking checks, and the warnings they raised."""

    epsilons: list[float]
    clean: float
    accuracy: dict[str, list[float]]
    n: int
    pgd_steps: int
    checks: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def metrics(self, prefix: str = "robust") -> dict[str, float]:
        out = {f"{prefix}/clean_acc": self.clean, f"{prefix}/masking_warnings": len(self.warnings)}
        for attack, values in self.accuracy.items():
            for eps, value in zip(self.epsilons, values, strict=True):
                out[f"{prefix}/{attack}_acc_eps_{eps:g}"] = value
        out.update({f"{prefix}/check/{k}": v for k, v in self.checks.items()})
        return out

    def table(self) -> str:
        lines = ["ε        " + "  ".join(f"{a:>7s}" for a in self.accuracy)]
        lines.append(f"{'0 (clean)':8s} " + "  ".join(f"{self.clean:7.3f}" for _ in self.accuracy))
        for i, eps in enumerate(self.epsilons):
            row = "  ".join(f"{self.accuracy[a][i]:7.3f}" for a in self.accuracy)
            lines.append(f"{eps:<8g} {row}")
        lines += [f"warning: {w}" for w in self.warnings] or ["masking checks: all passed"]
        return "\n".join(lines)

    def plot(self, ax=None, label: str = ""):
        from workbench.plots import _axes

        figure, ax = _axes(ax)
        for attack, values in self.accuracy.items():
            ax.plot(
                [0, *self.epsilons], [self.clean, *values], "-o", ms=3, label=f"{label}{attack}"
            )
        ax.set_xlabel("ε (L∞, natural scale)")
        ax.set_ylabel(f"accuracy ({self.n} test examples)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("accuracy under attack")
        ax.legend(fontsize=8)
        return figure


def accuracy_under(
    model: nn.Module, attack: str | None, natural: torch.Tensor, labels: torch.Tensor,
    eps: float = 0.0, steps: int = 20, restarts: int = 1, batch_size: int = 250,
) -> float:  # fmt: skip
    """Share of examples still classified correctly after the attack (with ``restarts``, an
    example counts only if every restart fails on it)."""
    correct = torch.ones(len(labels), dtype=torch.bool)
    for restart in range(restarts if attack is not None else 1):
        torch.manual_seed(restart)
        for start in range(0, len(labels), batch_size):
            x = natural[start : start + batch_size]
            y = labels[start : start + batch_size]
            if attack is not None and eps > 0:
                x = make_attack(attack, model, eps, steps, seed=restart)(x, y)
            with torch.no_grad():
                hit = model(x).argmax(dim=1).cpu() == y.cpu()
            correct[start : start + batch_size] &= hit
    return float(correct.float().mean())


def evaluate(
    net: nn.Module,
    data,
    attacks: list[str] = ("fgsm", "pgd"),
    epsilons: list[float] = (0.05, 0.1, 0.2, 0.3),
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    n_examples: int = 500,
    split: str = "test",
    checks: bool = True,
    progress: bool = False,
) -> RobustnessReport:
    """Attack the first ``n_examples`` of ``split`` with each attack at each ε and, with
    ``checks``, run the masking checks (PGD is added for them when not listed)."""
    from tqdm.auto import tqdm

    device = next(net.parameters()).device
    was_training = net.training
    model = natural_scale(net, data).to(device).eval()
    inputs, labels = data.split(split)
    inputs, labels = inputs[:n_examples].to(device), labels[:n_examples].to(device)
    natural = model.to_natural(inputs)
    epsilons = sorted(float(e) for e in epsilons)
    try:
        clean = accuracy_under(model, None, natural, labels)
        accuracy: dict[str, list[float]] = {}
        cases = [(a, e) for a in attacks for e in epsilons]
        for attack, eps in tqdm(cases, desc="attacks", disable=not progress):
            restarts = pgd_restarts if attack == "pgd" else 1
            value = accuracy_under(model, attack, natural, labels, eps, pgd_steps, restarts)
            accuracy.setdefault(attack, []).append(value)
        report = RobustnessReport(epsilons, clean, accuracy, len(labels), pgd_steps)
        if checks:
            _masking_checks(report, model, natural, labels, pgd_restarts)
    finally:
        net.train(was_training)
    return report


def _masking_checks(report, model, natural, labels, restarts: int) -> None:
    accuracy, epsilons, steps = report.accuracy, report.epsilons, report.pgd_steps
    if "pgd" not in accuracy:
        accuracy_pgd = [
            accuracy_under(model, "pgd", natural, labels, e, steps, restarts) for e in epsilons
        ]
    else:
        accuracy_pgd = accuracy["pgd"]
    warn = report.warnings.append
    if "fgsm" in accuracy:
        for eps, pgd, fgsm in zip(epsilons, accuracy_pgd, accuracy["fgsm"], strict=True):
            if pgd > fgsm + TOLERANCE:
                warn(f"PGD weaker than FGSM at ε = {eps:g} ({pgd:.3f} > {fgsm:.3f})")
    for attack, values in accuracy.items():
        curve = [report.clean, *values]
        for (e0, a0), (e1, a1) in zip(
            zip([0.0, *epsilons], curve, strict=True),
            zip([0.0, *epsilons][1:], curve[1:], strict=True),
            strict=False,
        ):
            if a1 > a0 + TOLERANCE:
                warn(f"{attack} accuracy rises with ε ({a0:.3f} at {e0:g}, {a1:.3f} at {e1:g})")
    # The steps and restarts checks at the ε where PGD leaves accuracy nearest 0.5: where a
    # stronger attack has room to show itself.
    at = min(range(len(epsilons)), key=lambda i: abs(accuracy_pgd[i] - 0.5))
    middle, base = epsilons[at], accuracy_pgd[at]
    more_steps = accuracy_under(model, "pgd", natural, labels, middle, 2 * steps, restarts)
    more_restarts = accuracy_under(model, "pgd", natural, labels, middle, steps, restarts + 1)
    large = accuracy_under(model, "pgd", natural, labels, LARGE_EPSILON, 2 * steps, restarts)
    report.checks = {
        f"pgd_acc_eps_{middle:g}": base,
        f"pgd_{2 * steps}_steps_acc_eps_{middle:g}": more_steps,
        f"pgd_{restarts + 1}_restarts_acc_eps_{middle:g}": more_restarts,
        f"pgd_acc_eps_{LARGE_EPSILON:g}": large,
    }
    if more_steps > base + TOLERANCE:
        warn(f"more PGD steps raised accuracy at ε = {middle:g} ({base:.3f} → {more_steps:.3f})")
    if more_restarts > base + TOLERANCE:
        warn(f"a PGD restart raised accuracy at ε = {middle:g} ({base:.3f} → {more_restarts:.3f})")
    if large > NEAR_ZERO:
        warn(
            f"accuracy {large:.3f} under PGD at ε = {LARGE_EPSILON:g} (expected near 0): the "
            "gradients may be masked"
        )


def robust_accuracy(net: nn.Module, data, eps: float, steps: int, n_examples: int) -> float:
    """PGD accuracy on the validation split: the second objective of a robustness study (never
    the test split: a study chooses on it)."""
    report = evaluate(net, data, ["pgd"], [eps], steps, 1, n_examples, "val", checks=False)
    return report.accuracy["pgd"][0]

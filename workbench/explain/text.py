"""Explanations of text classifiers (``workbench.data.text``): SHAP with its Text masker over the
tokenizer's word pieces, and LIME's text explainer over the same pieces, drawn as highlighted
tokens, with the trust measures of the other families.

A *unit* is a word piece of the text as the model's tokenizer cuts it (``scored`` is one piece,
``crystallography`` several); a removed piece becomes ``[MASK]`` for every method alike. Trust:
deletion of pieces in attribution order against random orders (the probability of the explained
class should fall faster: a smaller area), SHAP–LIME Spearman agreement per text, and a
randomisation check (SHAP on the same network with redrawn weights should agree little with SHAP
on the trained one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from workbench.explain.core import figure_axes
from workbench.explain.trust import area, randomized_copy, rank_agreement

Predict = Callable[[Sequence[str]], np.ndarray]


@dataclass
class TextExplanation:
    """Per-piece attributions for the class each text is explained for (its prediction)."""

    method: str
    texts: list[str]
    pieces: list[list[str]]
    """Each text's word pieces, as substrings of the text."""
    attributions: list[np.ndarray]
    """One value per piece: its contribution to the explained class."""
    targets: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None

    def plot(self, ax=None) -> Figure:
        """Each text on a line, every piece shaded by its attribution (red for the class, blue
        against it; each line scaled to its largest value)."""
        figure, grid = figure_axes(
            None if ax is None else [ax], (1, 1), (9, 0.45 * len(self.texts) + 0.6)
        )
        axes = grid[0, 0]
        axes.set_axis_off()
        for row, (pieces, values) in enumerate(zip(self.pieces, self.attributions, strict=True)):
            y = 1 - (row + 0.5) / len(self.texts)
            target = int(self.targets[row])
            name = self.class_names[target] if self.class_names else str(target)
            label = f"{name} p={self.probabilities[row, target]:.2f}: "
            text = axes.text(0, y, label, fontsize=8, va="center", transform=axes.transAxes)
            x = _right_edge(axes, text)
            limit = float(np.abs(values).max()) if len(values) else 0.0
            for piece, value in zip(pieces, values, strict=True):
                strength = value / limit if limit else 0.0
                colour = (1, 1 - strength, 1 - strength) if strength > 0 else (
                    1 + strength, 1 + strength, 1
                )  # fmt: skip
                text = axes.text(
                    x, y, piece, fontsize=9, va="center", transform=axes.transAxes,
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.0},
                )  # fmt: skip
                x = _right_edge(axes, text) + 0.004
        axes.set_title(f"{self.method}: word pieces for (red) and against (blue)", fontsize=9)
        return figure


def _right_edge(axes, text) -> float:
    """Where a drawn text ends, in axes coordinates: the next piece starts there."""
    box = text.get_window_extent()
    return float(axes.transAxes.inverted().transform((box.x1, box.y0))[0])


# --- the model as a function of strings --------------------------------------------------------
def text_classifier(
    network: torch.nn.Module, tokenizer, max_length: int, batch_size: int = 64
) -> Predict:
    """Class probabilities (N, C) of raw strings: tokenised as the data module does."""
    network = network.eval().cpu()

    def predict(texts: Sequence[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                [str(t) for t in texts[start : start + batch_size]],
                padding="max_length",
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            tokens = torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1)
            with torch.no_grad():
                rows.append(torch.softmax(network(tokens.long()), dim=1).numpy())
        return np.concatenate(rows)

    return predict


def piece_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character spans of the word pieces of ``text`` (no special tokens)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(a, b) for a, b in encoded["offset_mapping"] if b > a]


def masked(text: str, spans: list[tuple[int, int]], drop: np.ndarray, mask: str) -> str:
    """``text`` with the pieces where ``drop`` is true replaced by ``mask``."""
    out, last = [], 0
    for (a, b), gone in zip(spans, drop, strict=True):
        out += [text[last:a], mask if gone else text[a:b]]
        last = b
    return "".join(out) + text[last:]


# --- the two methods ---------------------------------------------------------------------------
def shap_text(
    predict: Predict, tokenizer, texts: list[str], targets: np.ndarray, max_evals: int = 200
) -> list[np.ndarray]:
    """SHAP values of each piece for the text's target class (shap's Text masker: pieces of the
    model's own tokenizer, masked with its ``[MASK]``)."""
    import shap

    explainer = shap.Explainer(predict, shap.maskers.Text(tokenizer))
    values = explainer(texts, max_evals=max_evals, silent=True)
    attributions = []
    for i, text in enumerate(texts):
        row, data = values.values[i], values.data[i]
        keep = [j for j, piece in enumerate(data) if piece.strip()]  # drop [CLS], [SEP] slots
        found = row[keep, int(targets[i])]
        expected = len(piece_spans(tokenizer, text))
        if len(found) != expected:  # shap decoded the pieces another way: fail loudly
            raise RuntimeError(f"SHAP gave {len(found)} pieces for {expected} in {text!r}")
        attributions.append(np.asarray(found, dtype=float))
    return attributions


def lime_text(
    predict: Predict,
    tokenizer,
    texts: list[str],
    targets: np.ndarray,
    num_samples: int = 500,
    seed: int = 0,
) -> list[np.ndarray]:
    """LIME's weights of each piece for the text's target class (pieces removed as ``[MASK]``,
    in place: ``bow=False``)."""
    from lime.lime_text import LimeTextExplainer

    attributions = []
    for text, target in zip(texts, targets, strict=True):
        explainer = LimeTextExplainer(
            split_expression=lambda s: [s[a:b] for a, b in piece_spans(tokenizer, s)],
            bow=False,
            mask_string=tokenizer.mask_token,
            random_state=seed,
        )
        n = len(piece_spans(tokenizer, text))
        result = explainer.explain_instance(
            text, predict, labels=(int(target),), num_features=n, num_samples=num_samples
        )
        weights = np.zeros(n)
        for index, weight in result.as_map()[int(target)]:
            weights[index] = weight
        attributions.append(weights)
    return attributions


# --- trust ---------------------------------------------------------------------------------------
def deletion_over_pieces(
    predict: Predict,
    tokenizer,
    texts: list[str],
    attributions: list[np.ndarray],
    targets: np.ndarray,
    steps: int = 10,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Deletion curves (probability of the target as the top pieces become ``[MASK]``) in
    attribution order and in random orders; their mean areas."""
    generator = np.random.default_rng(seed)
    ordered, random = [], []
    fractions = np.linspace(0, 1, steps + 1)
    for text, values, target in zip(texts, attributions, targets, strict=True):
        spans = piece_spans(tokenizer, text)
        orders = [np.argsort(-values, kind="stable")]
        orders += [generator.permutation(len(spans)) for _ in range(repeats)]
        batch = []
        for order in orders:
            for fraction in fractions:
                drop = np.zeros(len(spans), dtype=bool)
                drop[order[: int(round(fraction * len(spans)))]] = True
                batch.append(masked(text, spans, drop, tokenizer.mask_token))
        curves = predict(batch)[:, int(target)].reshape(len(orders), steps + 1)
        ordered.append(curves[0])
        random.append(curves[1:].mean(0))
    ordered, random = np.asarray(ordered), np.asarray(random)
    return {
        "deletion_auc": area(ordered),
        "random_deletion_auc": area(random),
        "curve": ordered.mean(0),
        "random_curve": random.mean(0),
    }


@dataclass
class TextReport:
    """SHAP and LIME explanations of some texts, with trust measures and figures."""

    explanations: dict[str, TextExplanation]
    trust: dict[str, float]
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def figures(self) -> dict[str, Figure]:
        """Highlighted pieces per method, and the deletion curves against random orders."""
        drawn = {f"explain/text_{k}.png": e.plot() for k, e in self.explanations.items()}
        drawn["explain/text_deletion.png"] = self.plot_deletion()
        return drawn

    def plot_deletion(self, ax=None) -> Figure:
        figure, grid = figure_axes(None if ax is None else [ax], (1, 1), (5, 3.4))
        axes = grid[0, 0]
        for method, curve in self.curves.items():
            fractions = np.linspace(0, 1, len(curve["curve"]))
            auc = self.trust[f"{method}/deletion_auc"]
            axes.plot(fractions, curve["curve"], "-o", markersize=3, label=f"{method} ({auc:.3f})")
        first = next(iter(self.curves.values()))
        random_auc = next(v for k, v in self.trust.items() if k.endswith("random_deletion_auc"))
        axes.plot(fractions, first["random_curve"], "--", color="gray",
                  label=f"random order ({random_auc:.3f})")  # fmt: skip
        axes.set_xlabel("fraction of word pieces masked")
        axes.set_ylabel("probability of the explained class")
        axes.set_title("deletion over tokens (area: lower is more faithful)", fontsize=9)
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
        return figure


def explain_text(
    network: torch.nn.Module,
    data,
    n: int = 8,
    shap_evals: int = 200,
    lime_samples: int = 500,
    seed: int = 0,
    split: str = "test",
) -> TextReport:
    """SHAP and LIME on the first ``n`` texts of ``data``'s ``split`` (a ``TextDataModule``) for
    the predicted class, with deletion, agreement and randomisation measures."""
    from workbench.data.text import load_tokenizer

    tokenizer = load_tokenizer()
    texts = data.texts(split)[:n]
    labels = data.split(split)[1][:n].numpy()
    predict = text_classifier(network, tokenizer, data.max_length)
    probabilities = predict(texts)
    targets = probabilities.argmax(1)
    pieces = [[t[a:b] for a, b in piece_spans(tokenizer, t)] for t in texts]
    found = {
        "shap": shap_text(predict, tokenizer, texts, targets, shap_evals),
        "lime": lime_text(predict, tokenizer, texts, targets, lime_samples, seed),
    }
    explanations = {
        method: TextExplanation(
            method.upper(), texts, pieces, values, targets, probabilities, labels, data.class_names
        )
        for method, values in found.items()
    }
    trust, curves = {}, {}
    for method, values in found.items():
        scores = deletion_over_pieces(predict, tokenizer, texts, values, targets, seed=seed)
        curves[method] = {"curve": scores["curve"], "random_curve": scores["random_curve"]}
        trust[f"{method}/deletion_auc"] = scores["deletion_auc"]
        trust[f"{method}/random_deletion_auc"] = scores["random_deletion_auc"]
    trust["agreement/spearman"] = _mean_agreement(found["shap"], found["lime"])
    randomized = text_classifier(randomized_copy(network, seed), tokenizer, data.max_length)
    shuffled = shap_text(randomized, tokenizer, texts, targets, shap_evals)
    trust["sanity/shap_spearman_vs_random_weights"] = _mean_agreement(found["shap"], shuffled)
    return TextReport(explanations, trust, curves)


def _mean_agreement(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    """Mean Spearman correlation over texts of different lengths (texts of one piece skip)."""
    values = [rank_agreement(a[None], b[None]) for a, b in zip(first, second, strict=True)]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")

"""Explanations of trained classifiers: SHAP, LIME or any method in the table, plotted, measured.

A library: it takes a network (or a LightningModule) and its data module, never a run or a study.
``workbench.trained(...).explain()`` starts from a study or an MLflow run and logs the report.
"""

from workbench.explain.core import Explanation, shap_summary_plots, side_by_side
from workbench.explain.explainers import EXPLAINERS, Attributions, ExplanationInputs
from workbench.explain.report import ExplanationReport, explain_model
from workbench.explain.trust import plot_curves

__all__ = [
    "EXPLAINERS",
    "Attributions",
    "Explanation",
    "ExplanationInputs",
    "ExplanationReport",
    "explain_model",
    "plot_curves",
    "shap_summary_plots",
    "side_by_side",
]

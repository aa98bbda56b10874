"""Explanations of trained classifiers: SHAP and LIME attributions, plotted, measured.

A library: it takes a network (or a LightningModule) and its data module, never a run or a study.
``workbench.trained(...).explain()`` starts from a study or an MLflow run and logs the report.
"""

from workbench.explain.core import Explanation, side_by_side
from workbench.explain.images import ImageExplanation, lime_images, shap_images
from workbench.explain.report import ExplanationReport, explain_images, explain_model

__all__ = [
    "Explanation",
    "ExplanationReport",
    "ImageExplanation",
    "explain_images",
    "explain_model",
    "lime_images",
    "shap_images",
    "side_by_side",
]

"""Uncertainty analysis: does u(s, a) know where the world model is wrong?

``python -m worldmodels.analysis.calibration`` scores every dynamics uncertainty estimator
(worldmodels/uncertainty.py) against the true one-step and h-step rollout errors of a trained
ensemble on a held-out dataset (Spearman and AUROC), and writes plots and a Markdown table.
"""

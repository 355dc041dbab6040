"""Uncertainty analysis: does u(s, a) know where the world model is wrong?

``metrics`` (rank metrics), ``evaluation`` (one-step and h-step errors next to every dynamics
estimator's u) and ``report`` (Markdown, JSON, plots). The command that fits or loads a model and
runs them on a held-out dataset is ``python -m agents.tools.calibration``.
"""

"""Evaluation: text-generation metrics and run reports."""

from medtune.eval.metrics import text_metrics
from medtune.eval.report import plot_loss_curve, render_markdown, write_report

__all__ = ["plot_loss_curve", "render_markdown", "text_metrics", "write_report"]

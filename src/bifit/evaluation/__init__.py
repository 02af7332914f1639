"""Evaluation equal to the official tools: DAVIS-2017 J&F (Ref-DAVIS17) and A2D/JHMDB-Sentences."""

from bifit.evaluation.a2d import a2d_metrics
from bifit.evaluation.davis import (
    average_global_results,
    davis_csv_texts,
    evaluate_davis,
    format_davis_table,
    write_davis_csvs,
)
from bifit.evaluation.metrics import (
    boundary_map,
    contour_accuracy,
    disk_kernel,
    mean_j_and_f,
    region_similarity,
    sequence_statistics,
)

__all__ = [
    "a2d_metrics",
    "average_global_results",
    "boundary_map",
    "contour_accuracy",
    "davis_csv_texts",
    "disk_kernel",
    "evaluate_davis",
    "format_davis_table",
    "mean_j_and_f",
    "region_similarity",
    "sequence_statistics",
    "write_davis_csvs",
]

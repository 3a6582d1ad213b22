"""Plotly figures and ipywidgets explorers, one module per topic of the course.

Notebooks import from here (`from mechlearn.viz import plot_board`), so a figure can move
between modules without breaking a chapter.
"""

from mechlearn.viz.attention import AttentionExplorer, plot_attention_patterns
from mechlearn.viz.othello import (
    OthelloExplorer,
    plot_board,
    plot_move_predictions,
    plot_probe_accuracy_by_layer,
    plot_probe_reading,
)
from mechlearn.viz.sae import FeatureBrowser, plot_cell_values, plot_dictionary_size_sweep
from mechlearn.viz.superposition import (
    plot_feature_dimensionality,
    plot_feature_geometry,
    plot_interference,
    plot_phase_diagram,
)
from mechlearn.viz.training import plot_training_history
from mechlearn.viz.widgets import EXPLORER_CLASS

__all__ = [
    "EXPLORER_CLASS",
    "AttentionExplorer",
    "FeatureBrowser",
    "OthelloExplorer",
    "plot_attention_patterns",
    "plot_board",
    "plot_cell_values",
    "plot_dictionary_size_sweep",
    "plot_feature_dimensionality",
    "plot_feature_geometry",
    "plot_interference",
    "plot_move_predictions",
    "plot_phase_diagram",
    "plot_probe_accuracy_by_layer",
    "plot_probe_reading",
    "plot_training_history",
]

"""Attention patterns and the attention explorer (chapters 01 and 03)."""

from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
from IPython.display import display
import plotly.express as px
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache

from mechlearn.validation import check_finite, check_tensor
from mechlearn.viz.widgets import EXPLORER_CLASS


def plot_attention_patterns(
    patterns: Float[Tensor, "n_heads query_pos key_pos"],
    labels: Sequence[str],
    title: str = "Attention patterns",
    heads: Sequence[int] | None = None,
) -> go.Figure:
    """One heatmap per head: row = the query position, column = the key it attends to.

    `heads` numbers the panels (default 0, 1, ...), e.g. `[5]` for a single head 5.
    """
    check_tensor(patterns, "patterns", 3, floating=True)
    check_finite(patterns, "patterns")
    n_heads, n_query, n_key = patterns.shape
    if len(labels) != n_key:
        raise ValueError(f"labels has {len(labels)} entries but the patterns have {n_key} key positions.")
    heads = list(range(n_heads)) if heads is None else list(heads)
    if len(heads) != n_heads:
        raise ValueError(f"heads names {len(heads)} heads but the patterns have {n_heads}.")
    ticks = [f"{i}:{label}" for i, label in enumerate(labels)]
    figure = px.imshow(
        patterns.detach().cpu().numpy(),
        facet_col=0,
        facet_col_wrap=min(n_heads, 4),
        x=ticks,
        y=ticks[:n_query],
        color_continuous_scale="Blues",
        zmin=0,
        zmax=1,
        labels={"x": "key", "y": "query", "color": "attention"},
        title=title,
    )
    figure.for_each_annotation(lambda a: a.update(text=f"head {heads[int(a.text.split('=')[-1])]}"))
    return figure


class AttentionExplorer(widgets.VBox):
    """Pick a layer, a head and a sequence; see that head's attention pattern (chapter 03).

    Built from a cache, so exploring never re-runs the model.
    """

    def __init__(self, cache: ActivationCache, labels: Sequence[Sequence[str]]):
        n_layers = sum(1 for name in cache.keys() if name.endswith("attn.hook_pattern"))
        if n_layers == 0:
            raise ValueError("the cache holds no attention patterns; run the model with run_with_cache first.")
        batch, n_heads = cache["blocks.0.attn.hook_pattern"].shape[:2]
        if len(labels) != batch:
            raise ValueError(f"labels has {len(labels)} sequences but the cache has {batch}.")
        self.cache, self.labels = cache, labels
        self.layer = widgets.Dropdown(options=range(n_layers), description="layer")
        self.head = widgets.Dropdown(options=range(n_heads), description="head")
        self.sequence = widgets.IntSlider(min=0, max=batch - 1, description="sequence")
        self.output = widgets.Output()
        for control in (self.layer, self.head, self.sequence):
            control.observe(lambda _: self.redraw(), names="value")
        super().__init__([widgets.HBox([self.layer, self.head, self.sequence]), self.output])
        self.add_class(EXPLORER_CLASS)
        self.redraw()

    def redraw(self) -> None:
        pattern = self.cache[f"blocks.{self.layer.value}.attn.hook_pattern"][self.sequence.value, self.head.value]
        title = f"Layer {self.layer.value}, head {self.head.value}, sequence {self.sequence.value}"
        self.figure = plot_attention_patterns(pattern[None], self.labels[self.sequence.value], title, [self.head.value])
        self.output.clear_output(wait=True)
        with self.output:
            display(self.figure)

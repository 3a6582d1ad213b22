"""What the course's explorers share: the CSS class that marks them and their step buttons."""

from __future__ import annotations

import ipywidgets as widgets

EXPLORER_CLASS = "mechlearn-explorer"  # how the browser test finds an explorer in the page


def step_button(control: widgets.ValueWidget, label: str, step: int) -> widgets.Button:
    """A button that moves a bounded integer control by `step`; the control clamps, so either end stays put."""
    button = widgets.Button(description=label, layout=dict(width="40px"))
    button.on_click(lambda _: setattr(control, "value", control.value + step))
    return button

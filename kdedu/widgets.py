"""Interactive widgets for the notebooks (ipywidgets). The static site shows a figure instead."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kdedu.losses import soft_targets


def temperature_explorer(logits, class_names: Sequence[str] | None = None, t_min: float = 0.1,
                         t_max: float = 100.0, value: float = 1.0):
    """A log-scale temperature slider over the bar chart of ``softmax(logits / T)``.

    Returns the ``ipywidgets`` box (display it as a cell's last expression). Also shows the
    entropy of the soft targets, which rises from 0 (T -> 0, one-hot) to log C (T -> inf, uniform).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    z = torch.as_tensor(logits, dtype=torch.float32).flatten()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(z))]
    slider = widgets.FloatLogSlider(value=value, base=10, min=torch.log10(torch.tensor(t_min)).item(),
                                    max=torch.log10(torch.tensor(t_max)).item(), step=0.01,
                                    description="T", continuous_update=True)
    out = widgets.Output()

    def draw(change=None):
        p = soft_targets(z, slider.value)
        entropy = -(p * p.clamp_min(1e-12).log()).sum().item()
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.bar(names, p.numpy())
            ax.set_ylim(0, 1)
            ax.set_ylabel("probability")
            ax.set_title(f"softmax(z / T), T = {slider.value:.2f}, entropy = {entropy:.2f} nats")
            plt.show()

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])

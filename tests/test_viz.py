"""Figures and explorers build without a browser and show the data they were given."""

import numpy as np
import pytest
import torch

from mechlearn import zoo
from mechlearn.tasks import SortingTask
from mechlearn.viz import AttentionExplorer, plot_attention_patterns, plot_training_history

HISTORY = [{"step": 10, "train_loss": 2.0, "eval_loss": 2.1}, {"step": 20, "train_loss": 0.5, "eval_loss": 0.6}]


def test_training_history_plots_each_metric_on_a_log_scale() -> None:
    figure = plot_training_history(HISTORY)
    assert [trace.name for trace in figure.data] == ["train_loss", "eval_loss"]
    assert list(figure.data[1].y) == [2.1, 0.6]
    assert figure.layout.yaxis.type == "log"
    assert plot_training_history(HISTORY, log_y=False).layout.yaxis.type == "linear"


def test_training_history_names_what_is_missing() -> None:
    with pytest.raises(KeyError, match="accuracy"):
        plot_training_history(HISTORY, metrics=("accuracy",))
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_history([])


def test_attention_patterns_need_one_label_per_key() -> None:
    with pytest.raises(ValueError, match="labels has 2 entries"):
        plot_attention_patterns(torch.rand(2, 3, 3), ["a", "b"])


@pytest.fixture(scope="module")
def sorter_cache():
    task = SortingTask()
    tokens = task.sample(3, torch.Generator().manual_seed(0))
    _, cache = zoo.load("sort-digits-2l").run_with_cache(tokens)
    labels = [["BOS", *task.decode(sequence[1:]).split()] for sequence in tokens]
    return cache, labels


def test_attention_explorer_follows_its_controls(sorter_cache) -> None:
    cache, labels = sorter_cache
    explorer = AttentionExplorer(cache, labels)
    assert np.allclose(explorer.figure.data[0].z, cache["blocks.0.attn.hook_pattern"][0, 0].numpy())
    explorer.layer.value, explorer.head.value, explorer.sequence.value = 1, 2, 2
    assert np.allclose(explorer.figure.data[0].z, cache["blocks.1.attn.hook_pattern"][2, 2].numpy())
    assert explorer.figure.layout.title.text == "Layer 1, head 2, sequence 2"


def test_attention_explorer_checks_labels(sorter_cache) -> None:
    cache, labels = sorter_cache
    with pytest.raises(ValueError, match="labels has 2 sequences but the cache has 3"):
        AttentionExplorer(cache, labels[:2])

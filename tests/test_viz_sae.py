"""Chapter 06 figures and the feature browser show the data they were given, and refuse wrong shapes."""


import numpy as np
import pytest
import torch
from bad_inputs import raises_one_sentence

import mechlearn.viz.sae as viz_sae
from mechlearn.tasks.othello import BLACK, WHITE
from mechlearn.viz import FeatureBrowser, plot_cell_values, plot_dictionary_size_sweep

SIZES = [16, 32, 64, 128]
SERIES = {"MMCS": [0.5, 0.8, 0.95, 0.97], "split": [0.0, 0.0, 0.1, 0.4]}


def test_cell_values_are_a_board_shaped_heatmap_diverging_around_zmid() -> None:
    values = torch.linspace(-1, 3, 36)
    figure = plot_cell_values(values, title="effect", colorbar_title="Δ logit")
    (heatmap,) = figure.data
    assert np.allclose(heatmap.z, values.reshape(6, 6).numpy())
    assert (heatmap.zmin, heatmap.zmax) == pytest.approx((-3, 3))
    assert heatmap.hovertext[1][0] == f"A2: {values[6].item():.3g}"
    assert heatmap.colorbar.title.text == "Δ logit" and figure.layout.title.text == "effect"
    assert (plot_cell_values(values, zmid=1.0).data[0].zmin, plot_cell_values(values, zmid=1.0).data[0].zmax) == (-1, 3)


def test_cell_values_take_a_sequential_range_from_the_data_or_the_caller() -> None:
    values = torch.linspace(0.2, 0.9, 16)
    heatmap = plot_cell_values(values, colorscale="Viridis", zmid=None).data[0]
    assert (heatmap.zmin, heatmap.zmax) == pytest.approx((0.2, 0.9))
    assert len(heatmap.z) == 4
    heatmap = plot_cell_values(values, colorscale="Viridis", zmid=None, zmin=0, zmax=1).data[0]
    assert (heatmap.zmin, heatmap.zmax) == (0, 1)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plot_cell_values(torch.zeros(37)), r"values has shape \(37,\)"),
        (lambda: plot_cell_values(torch.zeros(6, 6)), r"values has shape \(6, 6\)"),
        (lambda: plot_cell_values(torch.full((36,), float("nan"))), "finite"),
        (lambda: plot_cell_values(torch.rand(36), zmid=None, zmin=1, zmax=0), "zmin below zmax"),
        (lambda: plot_cell_values(torch.rand(36), size=12.5), "size must be None or the figure's width"),
    ],
)
def test_cell_values_refuse_what_they_cannot_draw(call, message) -> None:
    with raises_one_sentence(ValueError, message):
        call()


def test_sweep_draws_one_line_per_series_on_a_log_axis_and_marks_the_true_count() -> None:
    figure = plot_dictionary_size_sweep(SIZES, SERIES, n_true=64)
    *lines, marker = figure.data
    assert [line.name for line in lines] == ["MMCS", "split"]
    assert list(lines[0].x) == SIZES and list(lines[1].y) == SERIES["split"]
    assert figure.layout.xaxis.type == "log" and list(figure.layout.xaxis.tickvals) == SIZES
    assert marker.name == "n true features" and list(marker.x) == [64, 64] and marker.line.dash == "dash"


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("sizes", "series", "n_true", "message"),
    [
        ([16, 16, 32, 64], SERIES, 64, "sizes must be increasing"),
        ([16, 32, 64], SERIES, 64, "one value per size"),
        (SIZES, {}, 64, "one value per size"),
        (SIZES, {"MMCS": [0.5, 80, 90, 95]}, 64, r"fractions in \[0, 1\]"),
        (SIZES, SERIES, 0, "n_true must be a positive integer"),
    ],
)
def test_sweep_names_the_bad_argument(sizes, series, n_true, message) -> None:
    with pytest.raises(ValueError, match=message):
        plot_dictionary_size_sweep(sizes, series, n_true)


N, D_SAE = 40, 4


@pytest.fixture
def browser_data():
    """Latent 0 fires most at positions 17, 3, 26 (in that order), latent 1 twice, latent 2 never."""
    generator = torch.Generator().manual_seed(0)
    boards = torch.randint(-1, 2, (N, 36), generator=generator)
    legal = (boards == 0) & (torch.rand(N, 36, generator=generator) < 0.3)
    latents = torch.rand(N, D_SAE, generator=generator)
    latents[:, 0] = latents[:, 0].clamp(max=0.9)
    latents[[17, 3, 26], 0] = torch.tensor([5.0, 4.0, 3.0])
    latents[:, 1] = 0
    latents[[8, 29], 1] = torch.tensor([0.5, 2.0])
    latents[:, 2] = 0
    effect = torch.randn(D_SAE, 36, generator=generator)
    players = torch.tensor([BLACK, WHITE, 0, WHITE] * (N // 4))
    return boards, legal, latents, effect, players


def test_browser_draws_the_top_activating_positions_in_order(browser_data) -> None:
    boards, legal, latents, effect, players = browser_data
    browser = FeatureBrowser(boards, legal, latents, effect, players, [f"latent number {i}" for i in range(D_SAE)], n_top=3)
    histogram, effect_map, *tops = browser.figures
    assert [top.layout.title.text for top in tops] == ["act 5.00 · white to move", "act 4.00 · white to move",
                                                       "act 3.00 · game over"]
    black_discs = tops[0].data[0]  # plot_board's first trace: the black discs, at (column, row)
    assert sorted(zip(black_discs.y, black_discs.x)) == [divmod(c, 6) for c in (boards[17] == BLACK).nonzero()[:, 0].tolist()]
    assert np.allclose(effect_map.data[0].z, effect[0].reshape(6, 6).numpy())
    assert sum(histogram.data[0].y) == N
    assert "latent number 0" in browser.caption.value and "100.00% of 40 positions" in browser.caption.value
    assert "max activation 5" in browser.caption.value


def test_browser_shows_only_positions_where_the_latent_fires_and_handles_a_dead_one(browser_data) -> None:
    browser = FeatureBrowser(*browser_data, latent=1)
    assert [top.layout.title.text for top in browser.figures[2:]] == ["act 2.00 · white to move",
                                                                     "act 0.50 · black to move"]
    browser.latent.value = 2
    assert "dead" in browser.caption.value and len(browser.figures) == 2
    assert browser.figures[0].layout.title.text == "0 non-zero activations"


def test_browser_buttons_step_through_latents_and_stop_at_the_ends(browser_data) -> None:
    boards, legal, latents, effect, _ = browser_data
    browser = FeatureBrowser(boards, legal, latents, effect)
    browser.previous.click()
    assert browser.latent.value == 0
    browser.next.click()
    browser.next.click()
    assert browser.latent.value == 2
    assert np.allclose(browser.figures[1].data[0].z, effect[2].reshape(6, 6).numpy())
    browser.latent.value = D_SAE - 1
    browser.next.click()
    assert browser.latent.value == D_SAE - 1
    assert browser.figures[2].layout.title.text.startswith("act ") and "to move" not in browser.figures[2].layout.title.text


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(boards=torch.zeros(N, 35, dtype=torch.long)), r"each board has shape \(35,\)"),
        (dict(latents=torch.rand(N - 1, D_SAE)), "latents must have shape"),
        (dict(latents=-torch.rand(N, D_SAE)), "non-negative"),
        (dict(legal=torch.zeros(N, 16, dtype=torch.bool)), "legal must have shape"),
        (dict(logit_effect=torch.zeros(D_SAE + 1, 36)), "logit_effect must have shape"),
        (dict(players=torch.zeros(N + 1)), "players must have shape"),
        (dict(players=torch.full((N,), 2)), "players must hold 1"),
        (dict(descriptions=["one"]), "descriptions has 1 lines"),
        (dict(n_top=0), "n_top must be a positive integer"),
        (dict(latent=D_SAE), r"latent must be an index in \[0, 4\)"),
        (dict(latents=torch.full((N, D_SAE), float("nan"))), "latents contains NaN or inf"),
    ],
)
def test_browser_names_the_bad_argument(browser_data, change, message) -> None:
    boards, legal, latents, effect, players = browser_data
    arguments = dict(boards=boards, legal=legal, latents=latents, logit_effect=effect, players=players) | change
    with raises_one_sentence(ValueError, message):
        FeatureBrowser(**arguments)


def test_browser_steps_through_latents_at_full_size(monkeypatch) -> None:
    """20,000 positions and 512 latents, the chapter's size; serialising each figure stands in for the notebook's display."""
    monkeypatch.setattr(viz_sae, "display", lambda figure: figure.to_json())
    generator = torch.Generator().manual_seed(0)
    n, d_sae = 20_000, 512
    boards = torch.randint(-1, 2, (n, 36), generator=generator)
    latents = torch.relu(torch.randn(n, d_sae, generator=generator) - 1.5)
    browser = FeatureBrowser(boards, boards == 0, latents, torch.randn(d_sae, 36, generator=generator))
    for latent in range(1, 6):
        browser.latent.value = latent
        top = latents[:, latent].topk(6).values
        assert len(browser.figures) == 8
        assert [figure.layout.title.text.split(" ")[1] for figure in browser.figures[2:]] == [f"{value:.2f}" for value in top]

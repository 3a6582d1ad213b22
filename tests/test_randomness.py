"""Independent things draw independent randomness: no two of the library's random draws share a stream.

An SAE seeded 0 once started on exactly the planted dictionary seeded 0 that it was meant to
find, and the chapter's headline passed by construction. These tests prove that every stream
in the library is its own, and that the pairs which once coincided no longer do.
"""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mechlearn
from mechlearn.device import generator_for
from mechlearn.sae import SAE, SAEConfig, SparseFeatureData, mmcs
from mechlearn.superposition import ToyModel, ToyModelConfig

LIBRARY = Path(mechlearn.__file__).parent
SEEDS = (0, 1, 2, 12_345)

# Plain `manual_seed` is allowed only here, each for a reason.
PLAIN_SEEDS_ALLOWED = {
    "device.py": "seed_everything seeds the learner's global generators; generator_for builds on manual_seed",
    "zoo/__init__.py": "held-out data use HELD_OUT_SEED, which no training run uses",
    "zoo/recipes.py": "held-out data use HELD_OUT_SEED, which no training run uses",
    "train.py": "the zoo's checkpoints were trained on this token stream; changing it means retraining them",
    "tasks/induction.py": "chain_seed defines the task's bigram chain (part of the task the zoo models learned)",
}


def library_sources() -> dict[str, str]:
    """Every module of the library except the checks (whose inputs are test data, not the library's draws)."""
    return {
        path.relative_to(LIBRARY).as_posix(): path.read_text()
        for path in LIBRARY.rglob("*.py")
        if "checks" not in path.relative_to(LIBRARY).parts
    }


def library_streams() -> list[str]:
    return [stream for source in library_sources().values() for stream in re.findall(r'generator_for\(\s*"([^"]+)"', source)]


def first_draws(generator: torch.Generator) -> torch.Tensor:
    return torch.rand(64, generator=generator, dtype=torch.float64)


def test_the_library_names_its_streams() -> None:
    streams = library_streams()
    assert {"sae.init", "sae.batches", "sparse_features.dictionary", "superposition.init", "superposition.features"} <= set(streams)
    assert len(streams) == len(set(streams)), f"a stream is used for two purposes: {sorted(streams)}"


def test_plain_seeds_only_where_allowed() -> None:
    plain = {name for name, source in library_sources().items() if "manual_seed(" in source}
    assert plain <= set(PLAIN_SEEDS_ALLOWED), f"draw from generator_for(stream, seed) instead in {sorted(plain - set(PLAIN_SEEDS_ALLOWED))}"


def test_a_stream_repeats_under_its_seed() -> None:
    for stream in library_streams():
        assert torch.equal(first_draws(generator_for(stream, 7)), first_draws(generator_for(stream, 7)))


@pytest.mark.parametrize("seed", SEEDS)
def test_no_two_streams_coincide(seed: int) -> None:
    """Every pair of library streams, at equal seeds and at neighbouring ones, and the plain seed."""
    draws = {("plain", seed): first_draws(torch.Generator().manual_seed(seed))}
    for stream in library_streams():
        for offset in (0, 1):  # `seed + 1` was how the library once made a "different" stream
            draws[stream, seed + offset] = first_draws(generator_for(stream, seed + offset))
    stacked = torch.stack(list(draws.values()))
    equal_entries = (stacked[:, None] == stacked[None]).sum(dim=-1)
    equal_entries.fill_diagonal_(0)
    assert equal_entries.max() == 0


def test_generator_for_names_a_bad_argument() -> None:
    with pytest.raises(ValueError, match="stream"):
        generator_for("", 0)
    with pytest.raises(TypeError, match="seed"):
        generator_for("sae.init", 0.5)
    with pytest.raises(TypeError, match="seed"):
        generator_for("sae.init", True)


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_an_untrained_sae_does_not_start_on_the_planted_dictionary(seed: int) -> None:
    """Equal seeds once gave MMCS 1.000 before training; random unit vectors in 32 dimensions give about 0.45."""
    data = SparseFeatureData(n_features=256, d_model=32, features_per_input=5.0, seed=seed)
    for kind in ("relu", "topk"):
        sae = SAE(SAEConfig(d_in=32, d_sae=512, kind=kind, seed=seed))
        assert mmcs(sae.W_dec, data.dictionary()) < 0.6
    # The control that shows the test can see a coincidence: a decoder drawn from the dictionary's stream.
    shared = torch.randn(512, 32, generator=generator_for("sparse_features.dictionary", seed))
    assert mmcs(shared, data.dictionary()) > 0.999


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_toy_model_weights_are_not_its_training_features(seed: int) -> None:
    """The toy model's initial W is not a rescaled copy of the normals that any other stream (or the plain seed) draws."""
    W = ToyModel(ToyModelConfig(n_features=5, n_hidden=2, n_instances=4), seed=seed).W.detach().flatten()

    def cosine_with(generator: torch.Generator) -> float:
        return F.cosine_similarity(W, torch.randn(len(W), generator=generator), dim=0).item()

    others = [generator_for(stream, seed) for stream in library_streams() if stream != "superposition.init"]
    assert all(abs(cosine_with(generator)) < 0.5 for generator in [*others, torch.Generator().manual_seed(seed)])
    assert cosine_with(generator_for("superposition.init", seed)) > 0.999  # the control: its own stream

"""mechlearn.models: ModelConfig validation, make_model, and save/load with a JSON card."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformer_lens.model_bridge import TransformerBridge

from bad_inputs import raises_one_sentence

from mechlearn.models import CheckpointError, ModelConfig, load_model, load_pretrained, make_model, model_device, read_card, save_model, sha256_of

TINY = dict(d_vocab=7, n_ctx=8, d_model=8, n_layers=1, n_heads=2, d_head=4)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, "d_mlp": 16, **overrides})


def tokens(batch: int = 2, pos: int = 6) -> torch.Tensor:
    return torch.randint(0, TINY["d_vocab"], (batch, pos), generator=torch.Generator().manual_seed(0))


# --- ModelConfig -----------------------------------------------------------------------


@pytest.mark.bad_input
@pytest.mark.parametrize("d_model", [0, -8, 8.0, "8", None])
def test_config_rejects_bad_d_model(d_model) -> None:
    with pytest.raises(ValueError, match=r"ModelConfig\.d_model must be a positive int"):
        tiny_config(d_model=d_model)


@pytest.mark.bad_input
@pytest.mark.parametrize("field", ["d_vocab", "n_ctx", "n_layers", "n_heads", "d_head"])
def test_config_rejects_zero_sizes(field: str) -> None:
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field} must be a positive int"):
        tiny_config(**{field: 0})


@pytest.mark.bad_input
@pytest.mark.parametrize("d_mlp", [0, -1, 16.0, "16"])
def test_config_rejects_bad_d_mlp(d_mlp) -> None:
    with pytest.raises(ValueError, match=r"ModelConfig\.d_mlp must be a positive int or None"):
        tiny_config(d_mlp=d_mlp)


def test_config_attn_only_and_dict_round_trip() -> None:
    assert tiny_config(d_mlp=None).attn_only
    assert not tiny_config().attn_only
    config = tiny_config(seed=3, act_fn="relu")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="Unknown ModelConfig fields.*'d_modle'"):
        ModelConfig.from_dict({**TINY, "d_modle": 8})


# --- make_model --------------------------------------------------------------------------


@pytest.mark.bad_input
def test_make_model_rejects_non_config() -> None:
    with pytest.raises(TypeError, match="make_model expects a ModelConfig, got dict"):
        make_model(dict(TINY))


def test_make_model_is_a_bridge_with_transformer_lens_hooks() -> None:
    config = tiny_config()
    model = make_model(config)
    assert isinstance(model, TransformerBridge)
    assert model.mechlearn_config == config
    logits, cache = model.run_with_cache(tokens())
    assert logits.shape == (2, 6, config.d_vocab)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, config.n_heads, 6, 6)
    for name in ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out",
                 "blocks.0.hook_mlp_out", "blocks.0.mlp.hook_post", "blocks.0.hook_resid_post", "ln_final.hook_out"):
        assert name in cache, name
    # The attention pattern is causal and each row sums to one.
    pattern = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, config.n_heads, 6))
    assert (pattern.triu(diagonal=1) == 0).all()
    assert model.blocks[0].attn.W_Q.shape == (config.n_heads, config.d_model, config.d_head)


def test_attn_only_model_has_no_mlp_hooks() -> None:
    model = make_model(tiny_config(d_mlp=None, n_layers=2))
    _, cache = model.run_with_cache(tokens())
    assert "blocks.1.attn.hook_pattern" in cache
    assert not [name for name in cache.keys() if "mlp" in name]
    assert not [name for name in model.state_dict() if "mlp" in name]


def test_make_model_is_seeded_by_config() -> None:
    first, second = make_model(tiny_config()), make_model(tiny_config())
    other = make_model(tiny_config(seed=1))
    x = tokens()
    assert torch.equal(first(x), second(x))
    assert not torch.equal(first(x), other(x))


# --- save_model / load_model -----------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[TransformerBridge, Path]:
    model = make_model(tiny_config(seed=5))
    with torch.no_grad():  # not the fresh-init weights, so loading must really copy them
        for parameter in model.parameters():
            parameter.add_(0.1)
    card_path = save_model(model, tmp_path / "sub" / "tiny", card={"notes": "hello"})
    return model, card_path


def test_save_load_round_trip(saved) -> None:
    model, card_path = saved
    assert card_path.name == "tiny.json"
    weights_path = card_path.with_suffix(".safetensors")
    assert weights_path.is_file()
    card = json.loads(card_path.read_text())
    assert card["config"] == tiny_config(seed=5).to_dict()
    assert card["notes"] == "hello"
    assert card["sha256"] == hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert read_card(card_path.with_suffix("")) == card

    loaded = load_model(card_path.with_suffix(""))  # path without suffix
    assert isinstance(loaded, TransformerBridge)
    assert not loaded.training
    assert loaded.mechlearn_config == tiny_config(seed=5)
    model.eval()
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        # A freshly made model of the same config differs: the weights came from the file.
        assert not torch.equal(make_model(tiny_config(seed=5))(x), model(x))
    # Any suffix is accepted, as with save_model.
    assert torch.equal(load_model(weights_path)(x).detach(), model(x).detach())


@pytest.mark.bad_input
def test_save_model_needs_a_mechlearn_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="make_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x")


@pytest.mark.bad_input
def test_corrupted_weights_fail_the_hash(saved) -> None:
    _, card_path = saved
    weights_path = card_path.with_suffix(".safetensors")
    data = bytearray(weights_path.read_bytes())
    for i in range(len(data) - 16, len(data)):  # flip bytes inside the tensor data
        data[i] ^= 0xFF
    weights_path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(card_path)


@pytest.mark.bad_input
def test_unreadable_weights_with_matching_hash(saved) -> None:
    _, card_path = saved
    weights_path = card_path.with_suffix(".safetensors")
    weights_path.write_bytes(b"not a safetensors file")
    card = json.loads(card_path.read_text())
    card["sha256"] = hashlib.sha256(b"not a safetensors file").hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(card_path)


@pytest.mark.bad_input
def test_missing_weights(saved) -> None:
    _, card_path = saved
    card_path.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file .* is missing"):
        load_model(card_path)


@pytest.mark.bad_input
def test_missing_card(saved) -> None:
    _, card_path = saved
    card_path.unlink()
    with pytest.raises(CheckpointError, match="No model card"):
        load_model(card_path)
    with pytest.raises(CheckpointError, match="No model card"):
        read_card(card_path)


@pytest.mark.bad_input
def test_card_not_json(saved) -> None:
    _, card_path = saved
    card_path.write_text("{config: oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(card_path)


@pytest.mark.bad_input
@pytest.mark.parametrize("fields", [{"d_model": True}, {"act_fn": "tanh"}, {"normalization_type": "layernorm"}])
def test_config_rejects_bools_and_unknown_choices(fields) -> None:
    with pytest.raises(ValueError, match="ModelConfig"):
        ModelConfig(d_vocab=5, n_ctx=4, **fields)


# --- bad inputs: every one named in one sentence (issue 11) -------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> TransformerBridge:
    return make_model(tiny_config())


LONG = torch.zeros(1, TINY["n_ctx"] + 1, dtype=torch.long)
OUT_OF_VOCAB = torch.tensor([[0, TINY["d_vocab"]]])


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "run, bad, error, match",
    [
        ("call", LONG, ValueError, r"tokens has 9 positions, more than the model's n_ctx=8"),
        ("call", OUT_OF_VOCAB, ValueError, r"tokens must hold token ids in \[0, 7\), got values from 0 to 7"),
        ("call", torch.tensor([[0, -1]]), ValueError, r"tokens must hold token ids in \[0, 7\)"),
        ("call", torch.zeros(1, 3), TypeError, "tokens must be an integer tensor"),
        ("call", torch.zeros(1, 3, dtype=torch.bool), TypeError, "tokens must be an integer tensor of token ids"),
        ("call", torch.zeros(1, 2, 3, dtype=torch.long), ValueError, "tokens must have 1 or 2 dims"),
        ("call", torch.zeros(0, 3, dtype=torch.long), ValueError, "tokens is empty"),
        ("call", torch.zeros(1, 3, dtype=torch.long, device="meta"), ValueError, "tokens is on the meta device"),
        ("call", [[0, 1]], TypeError, "tokens must be a tensor, got list"),
        ("run_with_cache", OUT_OF_VOCAB, ValueError, r"tokens must hold token ids in \[0, 7\)"),
        ("run_with_cache", LONG, ValueError, "tokens has 9 positions"),
        ("run_with_hooks", OUT_OF_VOCAB, ValueError, r"tokens must hold token ids in \[0, 7\)"),
    ],
    ids=["too-long", "id-too-big", "id-negative", "float", "bool", "3-dims", "empty-batch", "meta", "list", "cache-vocab", "cache-long", "hooks-vocab"],
)
def test_bridge_names_bad_tokens(tiny_model, run: str, bad, error, match: str) -> None:
    call = {"call": tiny_model, "run_with_cache": tiny_model.run_with_cache, "run_with_hooks": tiny_model.run_with_hooks}[run]
    with raises_one_sentence(error, match):
        call(bad)


@pytest.mark.bad_input
def test_bridge_names_tokens_on_another_device() -> None:
    model = make_model(tiny_config()).to("meta")  # a second device every machine has
    with raises_one_sentence(ValueError, "tokens is on cpu but the model is on meta"):
        model(tokens())


def test_bridge_still_reads_one_sequence_and_embeddings(tiny_model) -> None:
    assert tiny_model(torch.tensor([0, 1, 2])).shape == (1, 3, TINY["d_vocab"])
    embeddings = tiny_model.embed(tokens()) + tiny_model.pos_embed(tokens())
    assert tiny_model(embeddings).shape == (2, 6, TINY["d_vocab"])


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "device, error, match",
    [
        ("cuad", ValueError, "device='cuad' is not a device torch knows"),
        pytest.param("cuda:7", ValueError, "device='cuda:7', but this machine has no such device",
                     marks=pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has 8 GPUs")),
        (3, TypeError, "device must be a str or torch.device, got int"),
    ],
)
def test_make_model_names_a_bad_device(device, error, match: str) -> None:
    with raises_one_sentence(error, match):
        make_model(tiny_config(), device=device)


@pytest.mark.bad_input
def test_load_pretrained_names_a_bad_device_before_any_download() -> None:
    with raises_one_sentence(ValueError, "device='cuad' is not a device torch knows"):
        load_pretrained("gpt2", device="cuad")


@pytest.mark.bad_input
def test_config_rejects_a_float_seed() -> None:
    with raises_one_sentence(ValueError, r"ModelConfig\.seed must be an int, got 1\.5"):
        tiny_config(seed=1.5)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "bad, error, match",
    [("model.pt", TypeError, "model must be a torch.nn.Module, got str"), (torch.nn.ReLU(), ValueError, r"model \(ReLU\) has no parameters")],
    ids=["not-a-module", "no-parameters"],
)
def test_model_device_names_a_bad_model(bad, error, match: str) -> None:
    with raises_one_sentence(error, match):
        model_device(bad)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "card, error, match",
    [("notes", TypeError, "card must be a dict of notes, got str"), ({"config": {}}, ValueError, r"card must not set \['config'\]")],
    ids=["not-a-dict", "sets-config"],
)
def test_save_model_names_a_bad_card(tmp_path: Path, card, error, match: str) -> None:
    with raises_one_sentence(error, match):
        save_model(make_model(tiny_config()), tmp_path / "x", card=card)


@pytest.mark.bad_input
def test_save_model_refuses_nan_weights(tmp_path: Path) -> None:
    model = make_model(tiny_config())
    with torch.no_grad():
        model.W_E[0, 0] = float("nan")
    with raises_one_sentence(ValueError, "The model's weight embed.weight contains NaN or inf"):
        save_model(model, tmp_path / "x")


def rewrite_card(card_path: Path, **changes) -> None:
    card = {**json.loads(card_path.read_text()), **changes}
    card_path.write_text(json.dumps({key: value for key, value in card.items() if value is not None}))


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "changes, match",
    [
        ({"config": None}, "has no config field"),
        ({"sha256": None}, "has no sha256 field"),
        ({"config": {**tiny_config(seed=5).to_dict(), "d_model": 16}}, "do not have the shapes its card's config gives"),
        ({"config": {**tiny_config(seed=5).to_dict(), "d_model": 0}}, r"has a bad config \(ModelConfig\.d_model must be a positive int"),
        ({"config": {**tiny_config(seed=5).to_dict(), "d_modle": 8}}, "has a bad config .Unknown ModelConfig fields"),
    ],
    ids=["no-config", "no-sha256", "config-disagrees-with-weights", "invalid-config", "unknown-field"],
)
def test_load_model_names_a_card_that_disagrees(saved, changes, match: str) -> None:
    _, card_path = saved
    rewrite_card(card_path, **changes)
    with raises_one_sentence(CheckpointError, match):
        load_model(card_path)


@pytest.mark.bad_input
def test_load_model_refuses_nan_weights(saved, tmp_path: Path) -> None:
    model, _ = saved
    state = {name: tensor.clone().contiguous() for name, tensor in model.state_dict().items()}
    state["embed.weight"][0, 0] = float("nan")
    weights_path = tmp_path / "nan.safetensors"
    save_file(state, weights_path)
    (tmp_path / "nan.json").write_text(json.dumps({"config": tiny_config(seed=5).to_dict(), "sha256": sha256_of(weights_path)}))
    with raises_one_sentence(CheckpointError, "holds NaN or inf weights"):
        load_model(weights_path)


@pytest.mark.bad_input
@pytest.mark.parametrize("function", [read_card, load_model])
def test_checkpoint_functions_name_a_path_that_is_not_one(function) -> None:
    with raises_one_sentence(TypeError, "path must be a str or Path, got int"):
        function(3)

"""`mechlearn.models.load_pretrained`: a local HF folder loads, and no network fails fast and clearly.

Nothing here touches the network: the "real" model is a tiny random GPT-2 saved to tmp_path.
"""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import mechlearn.models
from mechlearn.models import PretrainedUnavailable, load_pretrained
from transformer_lens.model_bridge import TransformerBridge

CHARS = "abcdefghijklmnopqrstuvwxyz "
VOCAB = 1 + len(CHARS)  # <|endoftext|> plus one token per character


def save_tiny_gpt2(folder: Path) -> GPT2LMHeadModel:
    """A random 2-layer GPT-2 and a character-level tokenizer, saved like a hub checkpoint."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    # boot_transformers loads a tokenizer from the same folder; build one offline.
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    special = "<|endoftext|>"
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=special, eos_token=special, unk_token=special
    ).save_pretrained(folder)
    return model


@pytest.fixture(autouse=True)
def downloads_allowed(monkeypatch):
    """The learner has opted in to downloads, so that the tests below reach the network checks."""
    monkeypatch.setenv(mechlearn.models.ONLINE_FLAG, "1")


@pytest.mark.bad_input
def test_a_hub_model_is_never_downloaded_unless_the_learner_opts_in(tmp_path, monkeypatch):
    monkeypatch.delenv(mechlearn.models.ONLINE_FLAG)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the network was asked without the learner's opt-in")

    boot_transformers = TransformerBridge.boot_transformers
    monkeypatch.setattr(mechlearn.models.socket, "create_connection", must_not_run)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", must_not_run)
    with pytest.raises(PretrainedUnavailable, match=r"^'gpt2' is not in the local Hugging Face cache.*set the environment variable MECHLEARN_ONLINE=1"):
        load_pretrained("gpt2")
    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot_transformers)
    save_tiny_gpt2(tmp_path / "local")  # a local folder needs no opt-in
    assert isinstance(load_pretrained(str(tmp_path / "local"), device="cpu"), TransformerBridge)


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """HF offline mode with an empty cache, so no cached copy or network can make a load succeed."""
    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    # huggingface_hub reads these environment variables once, at import time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))


def test_local_folder_matches_hf_logits_and_has_hooks(tmp_path):
    hf_model = save_tiny_gpt2(tmp_path)
    bridge = load_pretrained(str(tmp_path), device="cpu")
    assert isinstance(bridge, TransformerBridge)

    tokens = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        logits, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert cache["blocks.0.attn.hook_pattern"].shape == (3, 4, 12, 12)  # batch, head, query, key
    assert bridge.to_tokens("ab c").tolist() == [[0, 1, 2, 27, 3]]  # BOS, then one per char


@pytest.mark.bad_input
def test_hub_name_offline_and_not_cached_fails_fast(offline_empty_cache):
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailable, match=r"mechlearn\.zoo") as info:
        load_pretrained("gpt2", device="cpu")
    assert time.perf_counter() - start < 3.0
    assert "no network" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # raised `from None`


@pytest.fixture
def hub_answers(monkeypatch):
    """The hub seems reachable, so that the errors below come from the load itself."""
    monkeypatch.setattr(mechlearn.models, "_hub_reachable", lambda: True)


@pytest.mark.bad_input
def test_no_network_without_the_offline_flag_fails_before_the_hub_client_retries(tmp_path, monkeypatch):
    """The hub client would retry for about half a minute; one short connection attempt says it at once."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    attempts = []

    def refuse(address, timeout):
        attempts.append((address, timeout))
        raise OSError("Network is unreachable")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the hub client was asked, and would have retried")

    monkeypatch.setattr(mechlearn.models.socket, "create_connection", refuse)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", must_not_run)
    with pytest.raises(PretrainedUnavailable, match=r"no network connection.*mechlearn\.zoo"):
        load_pretrained("gpt2")
    assert len(attempts) == 1 and attempts[0][1] <= 5


@pytest.mark.bad_input
def test_wrapped_connection_error_becomes_pretrained_unavailable(monkeypatch, hub_answers):
    # Without the offline flag, transformers wraps the HTTP error in a plain OSError.
    def boot_without_network(*args, **kwargs):
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as error:
            raise OSError("We couldn't connect to 'https://huggingface.co'") from error

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot_without_network)
    with pytest.raises(PretrainedUnavailable, match=r"mechlearn\.zoo"):
        load_pretrained("gpt2")


def test_other_hub_errors_are_not_reported_as_no_network(monkeypatch, hub_answers):
    def boot_unknown_repo(*args, **kwargs):
        raise OSError("nosuchorg/nosuchmodel is not a valid model identifier")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot_unknown_repo)
    with pytest.raises(OSError, match="not a valid model identifier"):
        load_pretrained("nosuchorg/nosuchmodel")


@pytest.mark.bad_input
def test_missing_local_folder_says_it_does_not_exist(tmp_path, offline_empty_cache):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(str(missing))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained("./no_such_model_here")


@pytest.mark.bad_input
def test_folder_without_config_or_a_file_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(str(tmp_path))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_pretrained(str(a_file))


@pytest.mark.bad_input
@pytest.mark.parametrize("name", [None, 123, Path("gpt2"), "", "   "])
def test_name_must_be_a_non_empty_str(name):
    with pytest.raises(TypeError, match="name"):
        load_pretrained(name)

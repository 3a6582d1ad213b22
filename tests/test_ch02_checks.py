"""Chapter 02 checks pass on the library's answers and fail, with a hint, on typical mistakes."""

import copy

import einops
import pytest
import torch
from check_helpers import expect_failure

from mechlearn import attribution, patching
from mechlearn.checks import ch02
from mechlearn.train import next_token_loss

# --- every check passes on the library's answer ------------------------------------------------

REFERENCE_ANSWERS = [
    (ch02.check_head_outputs, attribution.head_outputs),
    (ch02.check_residual_components, attribution.residual_components),
    (ch02.check_apply_final_ln, attribution.apply_final_ln),
    (ch02.check_logit_lens, attribution.logit_lens),
    (ch02.check_direct_logit_attribution, attribution.direct_logit_attribution),
    (ch02.check_zero_ablate_head_hook, patching.zero_ablate_head_hook),
    (ch02.check_mean_ablate_head_hook, patching.mean_ablate_head_hook),
    (ch02.check_loss_with_heads_ablated, patching.loss_with_heads_ablated),
    (ch02.check_patch_position_hook, patching.patch_position_hook),
    (ch02.check_head_ablation_sweep, patching.head_ablation_sweep),
    (ch02.check_normalised_logit_difference, patching.normalised_logit_difference),
    (ch02.check_patch_every_position, patching.patch_every_position),
    (ch02.check_patch_every_head, patching.patch_every_head),
]


@pytest.mark.parametrize("check, answer", REFERENCE_ANSWERS, ids=lambda x: getattr(x, "__name__", ""))
def test_check_passes_on_reference(check, answer, capsys: pytest.CaptureFixture) -> None:
    check(answer)
    label = check.__name__.removeprefix("check_")
    assert capsys.readouterr().out == f"✓ {label}: all tests passed\n"


@pytest.mark.mistake
def test_a_learner_editing_the_cache_in_place_does_not_spoil_later_checks(capsys) -> None:
    def head_outputs(cache, model, layer):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        z *= 2  # a mistake, in place
        return attribution.head_outputs(cache, model, layer)

    expect_failure(ch02.check_head_outputs, head_outputs)
    ch02.check_residual_components(attribution.residual_components)
    assert "✓ residual_components" in capsys.readouterr().out


# --- head outputs and the decomposition ----------------------------------------------------------


@pytest.mark.mistake
def test_head_outputs_summed_over_heads() -> None:
    def head_outputs(cache, model, layer):
        return cache[f"blocks.{layer}.hook_attn_out"] - model.blocks[layer].attn.b_O

    message = expect_failure(ch02.check_head_outputs, head_outputs)
    assert "has shape (3, 10, 24), expected (3, 3, 10, 24)" in message


@pytest.mark.mistake
def test_head_outputs_with_b_o_in_every_head() -> None:
    def head_outputs(cache, model, layer):
        return attribution.head_outputs(cache, model, layer) + model.blocks[layer].attn.b_O

    expect_failure(ch02.check_head_outputs, head_outputs, hint_contains="leave b_O out")


@pytest.mark.mistake
def test_head_outputs_batch_first() -> None:
    def head_outputs(cache, model, layer):
        return einops.rearrange(attribution.head_outputs(cache, model, layer), "head batch pos d -> batch head pos d")

    expect_failure(ch02.check_head_outputs, head_outputs)


@pytest.mark.mistake
def test_head_outputs_in_reverse_head_order() -> None:
    """The sum over heads is right, so only comparing each head catches it."""

    def head_outputs(cache, model, layer):
        return attribution.head_outputs(cache, model, layer).flip(0)

    expect_failure(ch02.check_head_outputs, head_outputs, hint_contains="split between the heads")


def components_without(*left_out: str):
    def residual_components(cache, model):
        components, labels = attribution.residual_components(cache, model)
        keep = [i for i, label in enumerate(labels) if not any(part in label for part in left_out)]
        return components[keep], [labels[i] for i in keep]

    return residual_components


@pytest.mark.mistake
def test_components_without_b_o() -> None:
    message = expect_failure(ch02.check_residual_components, components_without("b_O"), hint_contains="b_O")
    assert "missing exactly each layer's b_O" in message


@pytest.mark.mistake
def test_components_without_the_positional_embedding() -> None:
    message = expect_failure(ch02.check_residual_components, components_without("pos_embed"))
    assert "missing exactly the positional embedding" in message


@pytest.mark.mistake
def test_components_without_the_mlps() -> None:
    message = expect_failure(ch02.check_residual_components, components_without("MLP"))
    assert "missing exactly the MLP outputs" in message


@pytest.mark.mistake
def test_components_per_layer_instead_of_per_head() -> None:
    def residual_components(cache, model):
        pieces = [cache["hook_embed"], cache["hook_pos_embed"]]
        for layer in range(model.cfg.n_layers):
            pieces += [cache[f"blocks.{layer}.hook_attn_out"], cache[f"blocks.{layer}.hook_mlp_out"]]
        return torch.stack(pieces), ["embed", "pos_embed", "L0 attn", "L0 MLP", "L1 attn", "L1 MLP"]

    message = expect_failure(ch02.check_residual_components, residual_components, hint_contains="one component per head")
    assert "you returned 6 components, expected 12" in message


@pytest.mark.mistake
def test_components_in_another_order() -> None:
    def residual_components(cache, model):
        components, labels = attribution.residual_components(cache, model)
        return components.flip(0), labels[::-1]

    expect_failure(ch02.check_residual_components, residual_components, hint_contains="the order is embed, pos_embed, L0H0")


def with_labels(edit):
    def residual_components(cache, model):
        components, labels = attribution.residual_components(cache, model)
        return components, edit(labels)

    return residual_components


@pytest.mark.mistake
@pytest.mark.parametrize(
    "edit",
    [lambda labels: [label.replace("H0", "H3") for label in labels], lambda labels: labels[:2] + sorted(labels[2:])],
    ids=["heads_counted_from_1", "labels_out_of_order"],
)
def test_components_with_wrong_labels(edit) -> None:
    message = expect_failure(ch02.check_residual_components, with_labels(edit), hint_contains="in the docstring's format")
    assert "the first is label 2: expected 'L0H0'" in message


@pytest.mark.mistake
def test_components_without_labels() -> None:
    def residual_components(cache, model):
        return attribution.residual_components(cache, model)[0]

    message = expect_failure(ch02.check_residual_components, residual_components)
    assert "expected a tuple (components, labels), got Tensor" in message


# --- the final LayerNorm, the lens and DLA --------------------------------------------------------


@pytest.mark.mistake
def test_final_ln_recomputing_the_scale() -> None:
    def apply_final_ln(resid, cache, model, add_bias=True):
        centred = resid - resid.mean(dim=-1, keepdim=True)
        normalised = centred / (centred.pow(2).mean(dim=-1, keepdim=True) + 1e-5).sqrt() * model.ln_final.w
        return normalised + model.ln_final.b if add_bias else normalised

    expect_failure(ch02.check_apply_final_ln, apply_final_ln, hint_contains="use the cached scale for every component")


@pytest.mark.mistake
def test_final_ln_always_adding_b() -> None:
    def apply_final_ln(resid, cache, model, add_bias=True):
        return attribution.apply_final_ln(resid, cache, model, add_bias=True)

    expect_failure(ch02.check_apply_final_ln, apply_final_ln, hint_contains="add b only when add_bias")


@pytest.mark.mistake
def test_final_ln_without_w() -> None:
    def apply_final_ln(resid, cache, model, add_bias=True):
        centred = resid - resid.mean(dim=-1, keepdim=True)
        return centred / cache["ln_final.hook_scale"] + (model.ln_final.b if add_bias else 0)

    expect_failure(ch02.check_apply_final_ln, apply_final_ln, hint_contains="multiply by model.ln_final.w")


@pytest.mark.mistake
def test_final_ln_without_centring() -> None:
    def apply_final_ln(resid, cache, model, add_bias=True):
        normalised = resid / cache["ln_final.hook_scale"] * model.ln_final.w
        return normalised + model.ln_final.b if add_bias else normalised

    expect_failure(ch02.check_apply_final_ln, apply_final_ln, hint_contains="centre over d_model")


@pytest.mark.mistake
def test_final_ln_centring_its_input_in_place() -> None:
    """Right values, but the caller's tensor (in the notebook, the cache's own) is centred too."""

    def apply_final_ln(resid, cache, model, add_bias=True):
        resid -= resid.mean(dim=-1, keepdim=True)
        normalised = resid / cache["ln_final.hook_scale"] * model.ln_final.w
        return normalised + model.ln_final.b if add_bias else normalised

    message = expect_failure(ch02.check_apply_final_ln, apply_final_ln, hint_contains=".clone()")
    assert "changed its argument `resid` in place" in message


@pytest.mark.mistake
def test_final_ln_with_the_right_sum_split_evenly() -> None:
    """Each component gets an equal share of the normalised sum: the sum is right, the components are not."""

    def apply_final_ln(resid, cache, model, add_bias=True):
        if resid.ndim == 3:
            return attribution.apply_final_ln(resid, cache, model, add_bias)
        total = attribution.apply_final_ln(resid.sum(dim=0), cache, model, add_bias)
        return (total / len(resid)).expand_as(resid)

    expect_failure(ch02.check_apply_final_ln, apply_final_ln, hint_contains="normalise each component on its own")


@pytest.mark.mistake
def test_logit_lens_with_the_frozen_scale() -> None:
    def logit_lens(cache, model):
        streams = torch.stack([cache["blocks.0.hook_resid_pre"], cache["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_post"]])
        return attribution.apply_final_ln(streams, cache, model) @ model.W_U + model.b_U

    expect_failure(ch02.check_logit_lens, logit_lens, hint_contains="with its own scale")


@pytest.mark.mistake
def test_logit_lens_without_the_final_stream() -> None:
    def logit_lens(cache, model):
        return attribution.logit_lens(cache, model)[:-1]

    message = expect_failure(ch02.check_logit_lens, logit_lens)
    assert "has shape (2, 3, 10, 13), expected (3, 3, 10, 13)" in message


@pytest.mark.mistake
def test_logit_lens_without_b_u() -> None:
    def logit_lens(cache, model):
        return attribution.logit_lens(cache, model) - model.b_U

    expect_failure(ch02.check_logit_lens, logit_lens, hint_contains="@ W_U + b_U")


def dla_scoring(target):
    """DLA scored on `target(tokens)` instead of the next token."""

    def direct_logit_attribution(cache, model, tokens):
        heads = torch.stack([attribution.head_outputs(cache, model, layer) for layer in range(model.cfg.n_layers)])
        normalised = attribution.apply_final_ln(heads, cache, model, add_bias=False)[..., :-1, :]
        return einops.einsum(normalised, model.W_U[:, target(tokens)], "l h b p d, d b p -> l h b p")

    return direct_logit_attribution


@pytest.mark.mistake
def test_dla_scored_on_the_current_token() -> None:
    expect_failure(ch02.check_direct_logit_attribution, dla_scoring(lambda tokens: tokens[:, :-1]), hint_contains="tokens[:, 1:]")


def test_dla_passes_when_written_by_hand(capsys) -> None:
    ch02.check_direct_logit_attribution(dla_scoring(lambda tokens: tokens[:, 1:]))
    assert "✓ direct_logit_attribution" in capsys.readouterr().out


@pytest.mark.mistake
def test_dla_with_an_unfrozen_layer_norm() -> None:
    def direct_logit_attribution(cache, model, tokens):
        heads = torch.stack([attribution.head_outputs(cache, model, layer) for layer in range(model.cfg.n_layers)])
        normalised = (model.ln_final(heads) - model.ln_final.b)[..., :-1, :]
        return einops.einsum(normalised, model.W_U[:, tokens[:, 1:]], "l h b p d, d b p -> l h b p")

    expect_failure(ch02.check_direct_logit_attribution, direct_logit_attribution, hint_contains="cached ln_final scale")


@pytest.mark.mistake
def test_dla_with_every_position() -> None:
    def direct_logit_attribution(cache, model, tokens):
        heads = torch.stack([attribution.head_outputs(cache, model, layer) for layer in range(model.cfg.n_layers)])
        return (attribution.apply_final_ln(heads, cache, model, add_bias=False) @ model.W_U).amax(dim=-1)

    message = expect_failure(ch02.check_direct_logit_attribution, direct_logit_attribution)
    assert "has shape (2, 3, 3, 10), expected (2, 3, 3, 9)" in message


# --- hooks -------------------------------------------------------------------------------------


def head_hook(ablate):
    """A hook factory whose hook applies `ablate(z, head)` to a copy of z."""

    def make(head, *args):
        def hook(z, hook):
            z = z.clone()
            ablate(z, head, *args)
            return z

        return hook

    return make


def zero_every_head(z, head):
    z[:] = 0.0


def zero_a_position(z, head):
    z[:, head] = 0.0


@pytest.mark.mistake
@pytest.mark.parametrize("mistake", [zero_every_head, zero_a_position])
def test_zero_ablation_mistakes(mistake) -> None:
    expect_failure(ch02.check_zero_ablate_head_hook, head_hook(mistake), hint_contains="zero z[:, :, head] only")


@pytest.mark.mistake
def test_zero_ablation_hook_that_returns_nothing() -> None:
    def zero_ablate_head_hook(head):
        def hook(z, hook):
            z.clone()[:, :, head] = 0.0  # changes a copy and drops it

        return hook

    expect_failure(ch02.check_zero_ablate_head_hook, zero_ablate_head_hook, hint_contains="return the new z")


@pytest.mark.mistake
def test_zero_ablation_factory_returning_the_wrong_thing() -> None:
    message = expect_failure(ch02.check_zero_ablate_head_hook, lambda head: None, hint_contains="return it")
    assert "returned NoneType, expected a hook function" in message


@pytest.mark.mistake
def test_zero_ablation_hook_that_crashes_names_the_line() -> None:
    def zero_ablate_head_hook(head):
        def hook(z, hook):
            return z * torch.ones(z.shape[-2])  # broadcasts against d_head, not head

        return hook

    message = expect_failure(ch02.check_zero_ablate_head_hook, zero_ablate_head_hook)
    assert "`hook` raised RuntimeError" in message and "torch.ones(z.shape[-2])" in message


def zero_the_head(z, head):
    z[:, :, head] = 0.0


def mean_the_head(z, head, mean_z):
    z[:, :, head] = mean_z[:, head]


def patch_the_position(activation, pos, source_activation):
    activation[:, pos] = source_activation[:, pos]


def in_place(edit, returns=True):
    """A hook factory whose hook applies the right `edit` to the activation it is given, not to a copy."""

    def make(*args):
        def hook(activation, hook):
            edit(activation, *args)
            return activation if returns else None

        return hook

    return make


@pytest.mark.mistake
@pytest.mark.parametrize(
    "check, make_hook",
    [
        (ch02.check_zero_ablate_head_hook, in_place(zero_the_head)),
        (ch02.check_zero_ablate_head_hook, in_place(zero_the_head, returns=False)),
        (ch02.check_mean_ablate_head_hook, in_place(mean_the_head)),
        (ch02.check_patch_position_hook, in_place(patch_the_position)),
    ],
    ids=["zero", "zero_returning_nothing", "mean", "patch"],
)
def test_hooks_editing_the_activation_in_place(check, make_hook) -> None:
    """In a run, the edit has the right effect; but the activation may also be in the learner's cache."""
    message = expect_failure(check, make_hook, hint_contains=".clone()")
    assert "changed its argument `activation` in place" in message


def mean_of_the_batch(z, head, mean_z):
    z[:, :, head] = z[:, :, head].mean(dim=0)


def mean_on_a_position(z, head, mean_z):
    z[:, head] = mean_z[:, head][: z.shape[2]].sum()


@pytest.mark.mistake
@pytest.mark.parametrize("mistake", [mean_of_the_batch, mean_on_a_position])
def test_mean_ablation_mistakes(mistake) -> None:
    expect_failure(ch02.check_mean_ablate_head_hook, head_hook(mistake), hint_contains="replace z[:, :, head] by mean_z[:, head]")


def loss_that(build_hooks, use_mask=True):
    def loss_with_heads_ablated(model, tokens, heads, mode="zero", mask=None):
        logits = model.run_with_hooks(tokens, fwd_hooks=build_hooks(model, tokens, heads, mode))
        return next_token_loss(logits, tokens, mask if use_mask else None)

    return loss_with_heads_ablated


@pytest.mark.mistake
def test_loss_ignoring_the_mask() -> None:
    expect_failure(ch02.check_loss_with_heads_ablated, loss_that(patching.head_ablation_hooks, use_mask=False))


@pytest.mark.mistake
def test_loss_ablating_only_the_first_head() -> None:
    expect_failure(
        ch02.check_loss_with_heads_ablated,
        loss_that(lambda model, tokens, heads, mode: patching.head_ablation_hooks(model, tokens, heads[:1], mode)),
        hint_contains="one hook per (layer, head)",
    )


@pytest.mark.mistake
def test_loss_always_zero_ablating() -> None:
    expect_failure(
        ch02.check_loss_with_heads_ablated,
        loss_that(lambda model, tokens, heads, mode: patching.head_ablation_hooks(model, tokens, heads, "zero")),
        hint_contains="from ONE clean run",
    )


@pytest.mark.mistake
def test_loss_taking_means_from_the_ablated_run() -> None:
    def means_on_the_fly(model, tokens, heads, mode):
        if mode == "zero":
            return patching.head_ablation_hooks(model, tokens, heads, mode)
        return [(f"blocks.{layer}.attn.hook_z", head_hook(mean_of_the_batch)(head, None)) for layer, head in heads]

    expect_failure(ch02.check_loss_with_heads_ablated, loss_that(means_on_the_fly), hint_contains="from ONE clean run")


@pytest.mark.mistake
def test_loss_leaving_its_hooks_attached() -> None:
    def loss_with_heads_ablated(model, tokens, heads, mode="zero", mask=None):
        for name, hook in patching.head_ablation_hooks(model, tokens, heads, mode):
            model.add_hook(name, hook)
        return next_token_loss(model(tokens), tokens, mask)

    message = expect_failure(ch02.check_loss_with_heads_ablated, loss_with_heads_ablated, hint_contains="reset_hooks()")
    assert "left 1 hook(s) attached to the model" in message


@pytest.mark.mistake
def test_loss_zeroing_w_o_in_place(capsys) -> None:
    """Right losses, but the model keeps the zeroed weights; the check restores them for the checks after it."""

    def loss_with_heads_ablated(model, tokens, heads, mode="zero", mask=None):
        if mode == "mean":
            return patching.loss_with_heads_ablated(model, tokens, heads, mode, mask)
        with torch.no_grad():
            for layer, head in heads:
                model.blocks[layer].attn.W_O[head] = 0.0
        return next_token_loss(model(tokens), tokens, mask)

    message = expect_failure(ch02.check_loss_with_heads_ablated, loss_with_heads_ablated, hint_contains="copy.deepcopy(model)")
    assert "changed the model's weights in place (blocks.0.attn.o.weight)" in message
    ch02.check_head_outputs(attribution.head_outputs)
    assert "✓ head_outputs" in capsys.readouterr().out


@pytest.mark.mistake
def test_loss_returning_a_float() -> None:
    def loss_with_heads_ablated(model, tokens, heads, mode="zero", mask=None):
        return patching.loss_with_heads_ablated(model, tokens, heads, mode, mask).item()

    message = expect_failure(ch02.check_loss_with_heads_ablated, loss_with_heads_ablated)
    assert "got float" in message


def patch_that(write):
    def patch_position_hook(pos, source_activation):
        def hook(activation, hook):
            patched = activation.clone()
            write(patched, source_activation, pos)
            return patched

        return hook

    return patch_position_hook


@pytest.mark.mistake
@pytest.mark.parametrize(
    "write",
    [
        lambda patched, source, pos: patched.__setitem__((slice(None), pos + 1), source[:, pos + 1]),
        lambda patched, source, pos: patched.__setitem__((slice(None), slice(pos, None)), source[:, pos:]),
        lambda patched, source, pos: patched.copy_(source),
        lambda patched, source, pos: patched.__setitem__((slice(None), slice(None), pos), source[:, :, pos]),
    ],
    ids=["next_position", "from_pos_on", "everything", "wrong_axis"],
)
def test_patching_mistakes(write) -> None:
    expect_failure(ch02.check_patch_position_hook, patch_that(write), hint_contains="overwrite only activation[:, pos]")


# --- other correct answers pass ------------------------------------------------------------------


def loss_with_hooks_added_then_removed(model, tokens, heads, mode="zero", mask=None):
    for name, hook in patching.head_ablation_hooks(model, tokens, heads, mode):
        model.add_hook(name, hook)
    loss = next_token_loss(model(tokens), tokens, mask)
    model.reset_hooks()
    return loss


def loss_on_a_copy_without_w_o(model, tokens, heads, mode="zero", mask=None):
    if mode == "mean":
        return patching.loss_with_heads_ablated(model, tokens, heads, mode, mask)
    ablated = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            ablated.blocks[layer].attn.W_O[head] = 0.0
    return next_token_loss(ablated(tokens), tokens, mask)


def zero_by_multiplying(head):
    def hook(z, hook):
        keep = torch.ones(z.shape[2], 1)
        keep[head] = 0.0
        return z * keep

    return hook


def mean_by_where(head, mean_z):
    def hook(z, hook):
        return torch.where(torch.arange(z.shape[2])[:, None] == head, mean_z, z)

    return hook


def patch_by_concatenating(pos, source_activation):
    def hook(activation, hook):
        return torch.cat([activation[:, :pos], source_activation[:, pos : pos + 1], activation[:, pos + 1 :]], dim=1)

    return hook


def head_outputs_in_a_loop(cache, model, layer):
    z = cache[f"blocks.{layer}.attn.hook_z"]
    return torch.stack([z[:, :, head] @ model.W_O[layer, head] for head in range(model.cfg.n_heads)])


def head_outputs_from_transformer_lens(cache, model, layer):
    """TransformerLens's own per-head results, which it adds to the cache."""
    return cache.stack_head_results(layer=layer + 1, pos_slice=None)[-model.cfg.n_heads :]


def final_ln_with_w_over_scale(resid, cache, model, add_bias=True):
    normalised = (resid - resid.mean(dim=-1, keepdim=True)) * (model.ln_final.w / cache["ln_final.hook_scale"])
    return normalised + model.ln_final.b if add_bias else normalised


@pytest.mark.parametrize(
    "check, answer",
    [
        (ch02.check_loss_with_heads_ablated, loss_with_hooks_added_then_removed),
        (ch02.check_loss_with_heads_ablated, loss_on_a_copy_without_w_o),
        (ch02.check_zero_ablate_head_hook, zero_by_multiplying),
        (ch02.check_mean_ablate_head_hook, mean_by_where),
        (ch02.check_patch_position_hook, patch_by_concatenating),
        (ch02.check_head_outputs, head_outputs_in_a_loop),
        (ch02.check_head_outputs, head_outputs_from_transformer_lens),
        (ch02.check_apply_final_ln, final_ln_with_w_over_scale),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_check_passes_on_other_correct_answers(check, answer, capsys) -> None:
    check(answer)
    assert "✓" in capsys.readouterr().out


# --- the experiments: ablate every head, the normalised logit difference, patch every position and head ---


def sweep_that(loss_of):
    """A head_ablation_sweep built on `loss_of(model, tokens, heads, mode, mask)`, clean loss from `heads=[]`."""

    def head_ablation_sweep(model, tokens, mode="zero", mask=None):
        clean = loss_of(model, tokens, [], mode, mask)
        return torch.stack(
            [
                torch.stack([loss_of(model, tokens, [(layer, head)], mode, mask) for head in range(model.cfg.n_heads)])
                for layer in range(model.cfg.n_layers)
            ]
        ) - clean

    return head_ablation_sweep


@pytest.mark.mistake
@pytest.mark.parametrize(
    "loss_of",
    [
        lambda model, tokens, heads, mode, mask: patching.loss_with_heads_ablated(model, tokens, heads, "zero", mask),
        lambda model, tokens, heads, mode, mask: patching.loss_with_heads_ablated(model, tokens, heads, mode, None),
        lambda model, tokens, heads, mode, mask: patching.loss_with_heads_ablated(model, tokens, heads, mode, mask)
        if heads
        else torch.tensor(0.0),
    ],
    ids=["always_zero_ablating", "ignoring_the_mask", "clean_loss_not_subtracted"],
)
def test_head_ablation_sweep_mistakes(loss_of) -> None:
    expect_failure(ch02.check_head_ablation_sweep, sweep_that(loss_of), hint_contains="minus the clean loss")


@pytest.mark.mistake
def test_head_ablation_sweep_ablating_cumulatively() -> None:
    """Each head is added to the heads already ablated, instead of ablated alone."""

    def head_ablation_sweep(model, tokens, mode="zero", mask=None):
        clean = patching.loss_with_heads_ablated(model, tokens, [], mode, mask)
        ablated, rows = [], []
        for layer in range(model.cfg.n_layers):
            row = []
            for head in range(model.cfg.n_heads):
                ablated.append((layer, head))
                row.append(patching.loss_with_heads_ablated(model, tokens, list(ablated), mode, mask) - clean)
            rows.append(torch.stack(row))
        return torch.stack(rows)

    expect_failure(ch02.check_head_ablation_sweep, head_ablation_sweep, hint_contains="one head at a time")


@pytest.mark.mistake
def test_head_ablation_sweep_head_first() -> None:
    def head_ablation_sweep(model, tokens, mode="zero", mask=None):
        return patching.head_ablation_sweep(model, tokens, mode, mask).T

    message = expect_failure(ch02.check_head_ablation_sweep, head_ablation_sweep)
    assert "has shape (3, 2), expected (2, 3)" in message


def test_head_ablation_sweep_passes_with_item_and_torch_tensor(capsys) -> None:
    def head_ablation_sweep(model, tokens, mode="zero", mask=None):
        clean = patching.loss_with_heads_ablated(model, tokens, [], mode, mask).item()
        return torch.tensor(
            [
                [patching.loss_with_heads_ablated(model, tokens, [(l, h)], mode, mask).item() - clean for h in range(model.cfg.n_heads)]
                for l in range(model.cfg.n_layers)
            ]
        )

    ch02.check_head_ablation_sweep(head_ablation_sweep)
    assert "✓ head_ablation_sweep" in capsys.readouterr().out


def metric_that(logit_difference, normalise_each_sequence=False, reverse=False):
    """A normalised_logit_difference built from `logit_difference(logits, pos, answers, wrong) -> [batch]`."""

    def normalised_logit_difference(patched_logits, clean_logits, corrupted_logits, pos, clean_answers, corrupted_answers):
        patched, clean, corrupted = (
            logit_difference(logits, pos, clean_answers, corrupted_answers) for logits in (patched_logits, clean_logits, corrupted_logits)
        )
        if reverse:
            corrupted, clean = clean, corrupted
        if normalise_each_sequence:
            return ((patched - corrupted) / (clean - corrupted)).mean()
        return (patched.mean() - corrupted.mean()) / (clean.mean() - corrupted.mean())

    return normalised_logit_difference


def per_sequence_difference(logits, pos, answers, wrong_answers):
    rows = torch.arange(len(logits))
    return logits[rows, pos, answers] - logits[rows, pos, wrong_answers]


@pytest.mark.mistake
@pytest.mark.parametrize(
    "metric",
    [
        metric_that(per_sequence_difference, normalise_each_sequence=True),
        metric_that(lambda logits, pos, a, w: per_sequence_difference(logits, pos + 1 if pos + 1 < logits.shape[1] else 0, a, w)),
        metric_that(lambda logits, pos, a, w: per_sequence_difference(logits.softmax(dim=-1), pos, a, w)),
    ],
    ids=["normalising_each_sequence", "next_position", "probabilities"],
)
def test_normalised_logit_difference_mistakes(metric) -> None:
    expect_failure(ch02.check_normalised_logit_difference, metric, hint_contains="(patched - corrupted) / (clean - corrupted)")


@pytest.mark.mistake
def test_normalised_logit_difference_the_wrong_way_round() -> None:
    """1 on the corrupted run and 0 on the clean one."""
    message = expect_failure(
        ch02.check_normalised_logit_difference, metric_that(per_sequence_difference, reverse=True), hint_contains="0 when the patched run"
    )
    assert "with the clean logits as the patched logits" in message


@pytest.mark.mistake
def test_normalised_logit_difference_per_sequence() -> None:
    def normalised_logit_difference(patched_logits, clean_logits, corrupted_logits, pos, clean_answers, corrupted_answers):
        patched, clean, corrupted = (
            per_sequence_difference(logits, pos, clean_answers, corrupted_answers) for logits in (patched_logits, clean_logits, corrupted_logits)
        )
        return (patched - corrupted) / (clean - corrupted)

    message = expect_failure(ch02.check_normalised_logit_difference, normalised_logit_difference)
    assert "has shape (6,), expected ()" in message


@pytest.mark.parametrize(
    "metric",
    [
        metric_that(per_sequence_difference),
        metric_that(lambda logits, pos, a, w: per_sequence_difference(logits.log_softmax(dim=-1), pos, a, w)),
        metric_that(lambda logits, pos, a, w: -per_sequence_difference(logits, pos, a, w)),  # answers swapped
    ],
    ids=["indexing", "log_probabilities", "answers_swapped"],
)
def test_normalised_logit_difference_passes_when_written_otherwise(metric, capsys) -> None:
    ch02.check_normalised_logit_difference(metric)
    assert "✓ normalised_logit_difference" in capsys.readouterr().out


def position_sweep_that(run):
    """A patch_every_position whose patched run for (name, pos) is `run(model, corrupted, clean_cache, name, pos)`."""

    def patch_every_position(model, corrupted_tokens, clean_cache, hook_names, metric):
        return torch.stack(
            [
                torch.stack([metric(run(model, corrupted_tokens, clean_cache, name, pos)) for pos in range(corrupted_tokens.shape[1])])
                for name in hook_names
            ]
        )

    return patch_every_position


def patch_from_the_corrupted_run(model, corrupted_tokens, clean_cache, name, pos):
    """Patches the corrupted run's own activation into it, as if the caches were mixed up: nothing changes."""
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    return model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patching.patch_position_hook(pos, corrupted_cache[name]))])


def patch_from_pos_on(model, corrupted_tokens, clean_cache, name, pos):
    def hook(activation, hook):
        patched = activation.clone()
        patched[:, pos:] = clean_cache[name][:, pos:]
        return patched

    return model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])


@pytest.mark.mistake
@pytest.mark.parametrize("run", [patch_from_the_corrupted_run, patch_from_pos_on], ids=["from_the_corrupted_run", "from_pos_on"])
def test_patch_every_position_mistakes(run) -> None:
    expect_failure(ch02.check_patch_every_position, position_sweep_that(run), hint_contains="run the CORRUPTED tokens")


@pytest.mark.mistake
def test_patch_every_position_every_name_at_once() -> None:
    def patch_every_position(model, corrupted_tokens, clean_cache, hook_names, metric):
        row = torch.stack(
            [
                metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patching.patch_position_hook(pos, clean_cache[name])) for name in hook_names]))
                for pos in range(corrupted_tokens.shape[1])
            ]
        )
        return row.expand(len(hook_names), -1)

    expect_failure(ch02.check_patch_every_position, patch_every_position, hint_contains="on that hook alone")


@pytest.mark.mistake
def test_patch_every_position_positions_first() -> None:
    def patch_every_position(model, corrupted_tokens, clean_cache, hook_names, metric):
        return patching.patch_every_position(model, corrupted_tokens, clean_cache, hook_names, metric).T

    message = expect_failure(ch02.check_patch_every_position, patch_every_position)
    assert "has shape (10, 4), expected (4, 10)" in message


@pytest.mark.mistake
def test_patch_every_position_leaving_hooks_attached() -> None:
    def patch_every_position(model, corrupted_tokens, clean_cache, hook_names, metric):
        rows = []
        for name in hook_names:
            row = []
            for pos in range(corrupted_tokens.shape[1]):
                model.add_hook(name, patching.patch_position_hook(pos, clean_cache[name]))
                row.append(metric(model(corrupted_tokens)))
            rows.append(torch.stack(row))
        return torch.stack(rows)

    expect_failure(ch02.check_patch_every_position, patch_every_position)


def test_patch_every_position_passes_with_the_hooks_context(capsys) -> None:
    def patch_every_position(model, corrupted_tokens, clean_cache, hook_names, metric):
        result = torch.zeros(len(hook_names), corrupted_tokens.shape[1])
        for i, name in enumerate(hook_names):
            for pos in range(corrupted_tokens.shape[1]):
                with model.hooks(fwd_hooks=[(name, patching.patch_position_hook(pos, clean_cache[name]))]):
                    result[i, pos] = metric(model(corrupted_tokens))
        return result

    ch02.check_patch_every_position(patch_every_position)
    assert "✓ patch_every_position" in capsys.readouterr().out


def head_sweep_that(write):
    """A patch_every_head whose hook for (head, pos) applies `write(z, source_z, head, pos)` to a copy of z."""

    def patch_every_head(model, corrupted_tokens, clean_cache, pos, metric):
        rows = []
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            row = []
            for head in range(model.cfg.n_heads):

                def hook(z, hook, head=head, source=clean_cache[name]):
                    z = z.clone()
                    write(z, source, head, pos)
                    return z

                row.append(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])))
            rows.append(torch.stack(row))
        return torch.stack(rows)

    return patch_every_head


@pytest.mark.mistake
@pytest.mark.parametrize(
    "write",
    [
        lambda z, source, head, pos: z.__setitem__((slice(None), slice(None), head), source[:, :, head]),
        lambda z, source, head, pos: z.__setitem__((slice(None), pos), source[:, pos]),
        lambda z, source, head, pos: z.__setitem__((slice(None), head), source[:, head]),
    ],
    ids=["every_position", "every_head", "head_as_position"],
)
def test_patch_every_head_mistakes(write) -> None:
    expect_failure(ch02.check_patch_every_head, head_sweep_that(write), hint_contains="z[:, pos, head]")


def test_patch_every_head_passes_when_written_by_hand(capsys) -> None:
    write = lambda z, source, head, pos: z.__setitem__((slice(None), pos, head), source[:, pos, head])  # noqa: E731
    ch02.check_patch_every_head(head_sweep_that(write))
    assert "✓ patch_every_head" in capsys.readouterr().out


@pytest.mark.parametrize("check", [check for check, _ in REFERENCE_ANSWERS], ids=lambda check: check.__name__)
def test_check_fails_on_the_stub(check) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise")

    assert "not implemented" in expect_failure(check, stub, hint_contains="NotImplementedError")

"""policy/kernels and the fused vision tower: the modules' own numbers, in fewer kernels (exact)."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionMLP, SmolVLMVisionTransformer

from dysta_ros.policy import kernels
from dysta_ros.policy.config import VisionConfig
from dysta_ros.policy.model import build_vision
from dysta_ros.policy.vision_reuse import encode_full

TOL = 1e-5  # fp32: only the summation order differs


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # norms away from 1 and biases away from 0, so both count
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return module.eval()


@pytest.mark.parametrize("rows", [7, kernels.ONEDNN_MAX_ROWS + 50])  # oneDNN's path, then MKL's
def test_linear_with_a_residual_is_the_module_plus_the_residual(rows):
    layer = _randomise(torch.nn.Linear(24, 40))
    x, residual = torch.randn(2, rows, 24), torch.randn(2, rows, 40)
    kept = residual.clone()
    with torch.inference_mode():
        out = kernels.linear(x, layer, residual=residual)
        assert torch.allclose(out, layer(x) + residual, atol=TOL)
        assert torch.equal(residual, kept)  # the residual is an input, never written
        assert torch.allclose(kernels.linear(x, layer), layer(x), atol=TOL)


def test_a_packed_weight_is_made_once_and_follows_the_weight_when_it_changes():
    layer = _randomise(torch.nn.Linear(24, 40))
    x = torch.randn(5, 24)
    with torch.inference_mode():
        packed = kernels.packed_weight(layer, 5)
        assert kernels.packed_weight(layer, 9) is packed  # rows are a hint: one copy per weight
        assert torch.allclose(torch.ops.mkldnn._linear_pointwise(x, packed, layer.bias, "none", [], ""),
                              layer(x), atol=TOL)
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # an in-place update (a training step, a load_state_dict)
    with torch.inference_mode():
        fresh = kernels.packed_weight(layer, 5)
        assert fresh is not packed
        assert torch.allclose(torch.ops.mkldnn._linear_pointwise(x, fresh, layer.bias, "none", [], ""),
                              layer(x), atol=TOL)


@pytest.mark.skipif(not kernels._BF16_UNITS, reason="bf16 products take oneDNN only on a CPU with bf16 units")
def test_bf16_products_on_packed_weights_are_f_linears_bit_for_bit():
    layer = _randomise(torch.nn.Linear(64, 96)).to(torch.bfloat16)
    cfg = SmolVLMVisionConfig(hidden_size=64, intermediate_size=96, hidden_act="gelu_pytorch_tanh")
    mlp = _randomise(SmolVLMVisionMLP(cfg)).to(torch.bfloat16)
    with torch.inference_mode():
        for rows in (3, 50, 300):  # one packed copy serves every row count
            x = torch.randn(rows, 64).to(torch.bfloat16)
            plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
            assert torch.equal(kernels.linear(x, layer), plain)
            # the activation inside the product reads the fp32 sum; the module's reads it rounded to bf16
            fused = kernels.linear_gelu(x, mlp.fc1, "tanh").float()
            module = torch.nn.functional.gelu(mlp.fc1(x), approximate="tanh").float()
            assert torch.allclose(fused, module, rtol=2**-6, atol=2**-8)
    assert layer in kernels._packed and mlp.fc1 in kernels._packed


@pytest.mark.parametrize("act", ["gelu_pytorch_tanh", "gelu"])
def test_the_siglip_mlp_fused_with_its_activation_is_the_module(act):
    cfg = SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, hidden_act=act)
    mlp = _randomise(SmolVLMVisionMLP(cfg))
    assert kernels.gelu_kind(mlp.activation_fn) == ("tanh" if act.endswith("tanh") else "none")
    x, residual = torch.randn(1, 9, 32), torch.randn(1, 9, 32)
    with torch.inference_mode():
        assert torch.allclose(kernels.mlp(mlp, x, residual), mlp(x) + residual, atol=TOL)


def test_the_llama_mlp_and_rmsnorm_are_the_modules():
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, hidden_act="silu", num_attention_heads=4,
                      num_key_value_heads=4)
    mlp, norm = _randomise(LlamaMLP(cfg)), _randomise(LlamaRMSNorm(32, eps=1e-5))
    x, residual = torch.randn(1, 5, 32) * 3, torch.randn(1, 5, 32)
    with torch.inference_mode():
        assert torch.allclose(kernels.gated_mlp(mlp, x, residual), mlp(x) + residual, atol=TOL)
        assert torch.allclose(kernels.rms_norm(norm, x), norm(x), atol=TOL)


def test_with_autograd_on_the_fused_paths_leave_gradients_intact():
    cfg = LlamaConfig(hidden_size=16, intermediate_size=24, hidden_act="silu", num_attention_heads=4,
                      num_key_value_heads=4)
    mlp = _randomise(LlamaMLP(cfg))
    x = torch.randn(1, 3, 16, requires_grad=True)
    kernels.gated_mlp(mlp, x, torch.zeros(1, 3, 16)).sum().backward()
    fused_grad = x.grad.clone()
    x.grad = None
    mlp(x).sum().backward()
    assert torch.allclose(fused_grad, x.grad, atol=TOL)


def test_the_fused_smolvlm_tower_is_transformers_tower():
    cfg = SmolVLMVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                              num_attention_heads=4, image_size=64, patch_size=16)
    cfg._attn_implementation = "sdpa"
    tower = _randomise(SmolVLMVisionTransformer(cfg))
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        reference = tower(pixel_values=pixels, patch_attention_mask=None).last_hidden_state
        fused = encode_full(tower, pixels)
    assert fused.shape == reference.shape == (2, 16, 48)
    assert (fused - reference).abs().max() <= TOL * reference.abs().max()


def test_the_fused_siglip_tower_of_this_packages_vla_is_transformers_tower():
    vision = _randomise(build_vision(VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4,
                                                  mlp_width=64)))
    pixels = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        reference = vision(pixel_values=pixels).last_hidden_state
        fused = encode_full(vision, pixels)
    assert (fused - reference).abs().max() <= TOL * reference.abs().max()


def test_frames_of_another_size_take_the_module_not_a_wrong_position_table():
    cfg = SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, image_size=64, patch_size=16)
    cfg._attn_implementation = "sdpa"
    tower = _randomise(SmolVLMVisionTransformer(cfg))
    pixels = torch.rand(1, 3, 32, 48)  # fewer patches than positions: transformers buckets them
    with torch.inference_mode():
        reference = tower(pixel_values=pixels, patch_attention_mask=None).last_hidden_state
        assert torch.allclose(encode_full(tower, pixels), reference, atol=TOL)


def test_side_by_side_runs_each_job_on_its_own_thread_and_gives_the_same_numbers():
    import threading

    layer = _randomise(torch.nn.Linear(64, 64))
    inputs = [torch.randn(32, 64) for _ in range(3)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []

        def job(x):
            seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()))
            return layer(x)

        with torch.inference_mode():
            results = kernels.side_by_side([lambda x=x: job(x) for x in inputs])
        assert len({ident for ident, _, _ in seen}) >= 2  # really side by side
        assert all(threads == 1 and inference for _, threads, inference in seen)  # one thread each
        assert len(seen) == 3
        assert torch.get_num_threads() == 2  # the caller's count again
        for x, out in zip(inputs, results):
            assert torch.allclose(out, layer(x), atol=TOL)
        # autograd carries over: a gradient flows through a worker's result
        x = torch.randn(4, 64, requires_grad=True)
        kernels.side_by_side([lambda: layer(x).sum(), lambda: layer(x).sum()])[0].backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
    finally:
        torch.set_num_threads(before)


def test_side_by_side_hands_a_workers_error_to_the_caller_and_restores_the_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def broken():
            raise ValueError("camera 2 is broken")

        with pytest.raises(ValueError, match="camera 2"):
            kernels.side_by_side([lambda: 1, broken])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_module_with_a_forward_hook_is_called_not_fused():
    # what a user's (or a test's) hook expects: it sees every call the unfused model would make
    cfg = SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, image_size=32, patch_size=16)
    cfg._attn_implementation = "sdpa"
    tower = _randomise(SmolVLMVisionTransformer(cfg))
    layer = _randomise(torch.nn.Linear(8, 8))
    calls = []
    tower.register_forward_pre_hook(lambda module, args: calls.append("tower"))
    layer.register_forward_pre_hook(lambda module, args: calls.append("linear"))
    with torch.inference_mode():
        encode_full(tower, torch.rand(1, 3, 32, 32))
        kernels.linear(torch.randn(2, 8), layer, residual=torch.randn(2, 8))
    assert calls == ["tower", "linear"]


@pytest.mark.parametrize("batched", [False, True])
def test_multi_head_attention_takes_the_flash_kernel_for_unbatched_tokens_too(batched):
    # The changed-token encoder attends over one image's (N, C) tokens: given to SDPA as 3-D,
    # torch's CPU dispatch fell back to the math kernel, ~3x slower at the real size.
    from torch.profiler import ProfilerActivity, profile

    from dysta_ros.policy.vision_reuse import _multi_head_attention

    heads, tokens, channels = 4, 33, 32
    q, k, v = torch.randn(3, *((2,) if batched else ()), tokens, channels).unbind(0)
    with profile(activities=[ProfilerActivity.CPU]) as run:
        out = _multi_head_attention(q[..., :17, :], k, v, heads)
    kernels_used = {event.key for event in run.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels_used
    assert "aten::_scaled_dot_product_attention_math" not in kernels_used

    def split(t):  # (..., heads, T, D)
        return t.unflatten(-1, (heads, -1)).transpose(-3, -2)

    scores = split(q[..., :17, :]) @ split(k).transpose(-1, -2) / (channels // heads) ** 0.5
    reference = (scores.softmax(-1) @ split(v)).transpose(-3, -2).flatten(-2)
    assert out.shape == reference.shape and torch.allclose(out, reference, atol=TOL)

"""Exact fast paths for the layers every family runs at inference: fewer passes over memory.

The same arithmetic as the transformers modules they stand in for, in fewer kernels:
- a linear whose output feeds a residual sum is one addmm with the residual (+ bias) as its
  input: no separate add and no bias broadcast copy;
- an activation after a linear runs in place, or inside oneDNN's GEMM as a post-op;
- norms go through torch's fused kernels when the module is the plain formula.
Only summation order may differ from the modules: within ~1e-6 in fp32
(test/core/test_kernels.py). For inference: the training path calls the modules themselves,
and so does any module with forward hooks (a hook sees every call it would see unfused).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from transformers.activations import GELUActivation, GELUTanh, SiLUActivation

T = TypeVar("T")


# Products of at most this many rows (the expert's 50 action tokens, the ~130-token prefix) go
# through oneDNN: in two-thread microbenchmarks of one expert step on the AVX2 build machine it
# was up to ~15 % faster than MKL (under load; the quiet end-to-end bench in README shows the
# head within noise); the vision tower's 1024-row products stay with MKL, a little faster at one
# thread per camera. Either way the same fp32 products, only summed in another order.
ONEDNN_MAX_ROWS = 256
_onednn_linear = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
                  if torch.backends.mkldnn.is_available() else None)


def hooked(module: nn.Module) -> bool:
    """True when forward hooks would see this module's call: then it must be called, not fused."""
    return bool(module._forward_hooks or module._forward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks)


def _onednn_fp32(x: torch.Tensor, layer: nn.Linear) -> bool:
    """True when oneDNN can run layer on x here: fp32 on the CPU, autograd off, oneDNN built in."""
    return (_onednn_linear is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and layer.weight.dtype == torch.float32 and not torch.is_grad_enabled())


def _small_fp32_cpu(x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor | None) -> bool:
    return (_onednn_fp32(x, layer) and x.numel() <= ONEDNN_MAX_ROWS * x.shape[-1]
            and (residual is None or residual.dtype == torch.float32))


def linear(x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Return layer(x) (+ residual): x (..., K) -> (..., N); residual (..., N) is left unchanged."""
    if hooked(layer):
        return layer(x) if residual is None else residual + layer(x)
    if _small_fp32_cpu(x, layer, residual):
        flat = x.reshape(-1, x.shape[-1])
        if residual is None:
            out = _onednn_linear(flat, layer.weight, layer.bias, "none", [], "")
        else:  # the residual sum as the GEMM's post-op
            other = residual.reshape(flat.shape[0], -1)
            out = _onednn_linear.binary(flat, other, layer.weight, layer.bias, "add")
        return out.view(*x.shape[:-1], out.shape[-1])
    if residual is None:
        return F.linear(x, layer.weight, layer.bias)
    if residual.dtype != x.dtype or residual.dtype != layer.weight.dtype:
        return residual + F.linear(x, layer.weight, layer.bias)
    flat = x.reshape(-1, x.shape[-1])
    base = residual.reshape(-1, residual.shape[-1])
    base = base + layer.bias if layer.bias is not None else base
    return torch.addmm(base, flat, layer.weight.t()).view(residual.shape)


def linear_gelu(x: torch.Tensor, layer: nn.Linear, approximate: str) -> torch.Tensor:
    """Return gelu(layer(x)) with the activation fused into the GEMM where oneDNN does it (fp32 CPU)."""
    if _onednn_fp32(x, layer):
        flat = x.reshape(-1, x.shape[-1])
        out = _onednn_linear(flat, layer.weight, layer.bias, "gelu", [], approximate)
        return out.view(*x.shape[:-1], out.shape[-1])
    return F.gelu(F.linear(x, layer.weight, layer.bias), approximate=approximate)


def gelu_kind(activation: nn.Module) -> str | None:
    """'tanh' or 'none' (exact) for transformers' GELU modules; None for anything else."""
    if isinstance(activation, GELUTanh):
        return "tanh"
    if isinstance(activation, GELUActivation) and getattr(activation, "act", None) is F.gelu:
        return "none"
    return None


def mlp(module: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Return module(x) (+ residual) for a fc1 -> activation -> fc2 MLP (SigLIP's), fused where known."""
    kind = gelu_kind(getattr(module, "activation_fn", None))
    if kind is None or not hasattr(module, "fc1") or any(hooked(m) for m in module.modules()):
        return module(x) if residual is None else residual + module(x)
    return linear(linear_gelu(x, module.fc1, kind), module.fc2, residual)


def layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if hooked(module):
        return module(x)
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm (w * x * rsqrt(mean(x^2) + eps), in fp32) in one fused kernel when exact.

    Fused only in fp32, where the module's casts are no-ops; other dtypes take the module.
    """
    weight = module.weight
    if x.dtype == torch.float32 and weight.dtype == torch.float32 and not hooked(module):
        return F.rms_norm(x, (x.shape[-1],), weight, module.variance_epsilon)
    return module(x)


def gated_mlp(module: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Return residual + down(act(gate(x)) * up(x)) for a Llama MLP, activation and product in place."""
    if (torch.is_grad_enabled() or not isinstance(getattr(module, "act_fn", None), (nn.SiLU, SiLUActivation))
            or any(hooked(m) for m in module.modules())):
        return residual + module(x)  # in-place activation would break autograd
    gate = F.silu(linear(x, module.gate_proj), inplace=True).mul_(linear(x, module.up_proj))
    return linear(gate, module.down_proj, residual)


def side_by_side(jobs: list[Callable[[], T]]) -> list[T]:
    """Run independent jobs (one camera's encode each) at once, each on its share of the CPU threads.

    Two images on two cores: one thread each keeps both cores on large GEMMs without the
    synchronisation a two-thread GEMM of one image pays (the same numbers: each job's arithmetic
    is what one thread would do alone). Autograd and inference mode carry over to the workers;
    the caller's thread is one of them. One job or one thread: the jobs run one after the other.
    """
    threads = torch.get_num_threads()
    workers = min(len(jobs), threads)
    if workers < 2:
        return [job() for job in jobs]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(indices: range) -> None:
        torch.set_num_threads(threads // workers)  # this worker's OpenMP team
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                for index in indices:
                    results[index] = jobs[index]()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    shares = [range(worker, len(jobs), workers) for worker in range(workers)]
    helpers = [threading.Thread(target=run, args=(share,), name="dysta-side-by-side", daemon=True)
               for share in shares[1:]]
    for helper in helpers:
        helper.start()
    try:
        run(shares[0])
    finally:
        for helper in helpers:
            helper.join()
        torch.set_num_threads(threads)  # MKL's count is process-wide: the caller's again
    if errors:
        raise errors[0]
    return results

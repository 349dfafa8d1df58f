"""Exact fast paths for the layers every family runs at inference: fewer passes over memory.

The same arithmetic as the transformers modules they stand in for, in fewer kernels:
- a linear whose output feeds a residual sum is one addmm with the residual (+ bias) as its
  input: no separate add and no bias broadcast copy;
- an activation after a linear runs in place, or inside oneDNN's GEMM as a post-op;
- norms go through torch's fused kernels when the module is the plain formula;
- bf16 products read their weight in oneDNN's own layout, reordered once (packed_weight).
Only summation order may differ from the modules: within ~1e-6 in fp32
(test/core/test_kernels.py). For inference: the training path calls the modules themselves,
and so does any module with forward hooks (a hook sees every call it would see unfused).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from transformers.activations import GELUActivation, GELUTanh, SiLUActivation

from dysta_ros.policy.devices import native_bfloat16

T = TypeVar("T")


# fp32 products of at most this many rows (the expert's 50 action tokens, the ~130-token prefix)
# go through oneDNN: in two-thread microbenchmarks of one expert step on the AVX2 build machine it
# was up to ~15 % faster than MKL; the vision tower's 1024-row products stay with MKL, a little
# faster at one thread per camera. Either way the same fp32 products, only summed in another
# order. bf16 products all go through oneDNN where the CPU has bf16 units, with packed weights
# (packed_weight): on an AMX Xeon the expert's products are 1.3x faster so (1.8x with weights hot
# in cache), bit for bit the same. Packed fp32 weights gained ~3 % there (weights stream from
# memory at 50 rows) for a second copy of them, so fp32 stays unpacked.
ONEDNN_MAX_ROWS = 256
_onednn_linear = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
                  if torch.backends.mkldnn.is_available() else None)
_BF16_UNITS = _onednn_linear is not None and native_bfloat16(torch.device("cpu"))
# layer -> ((weight's address, version), its weight in oneDNN's blocked layout). Kept beside the
# modules, not on them, so a deep copy or a state dict never meets an opaque tensor; an entry goes
# with its module. Reordering costs a copy of the weight once, not a reorder inside every product.
_packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hooked(module: nn.Module) -> bool:
    """True when forward hooks would see this module's call: then it must be called, not fused."""
    return bool(module._forward_hooks or module._forward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks)


def _onednn_runs(x: torch.Tensor, layer: nn.Linear, any_rows: bool = False) -> bool:
    """True when oneDNN runs layer on x here.

    On the CPU with autograd off, x in the weight's dtype: fp32 (few rows, unless any_rows), or
    bf16 where the CPU has bf16 units.
    """
    dtype = layer.weight.dtype
    if (_onednn_linear is None or x.device.type != "cpu" or x.dtype != dtype or torch.is_grad_enabled()
            or not layer.weight.is_contiguous()):
        return False
    if dtype == torch.bfloat16:
        return _BF16_UNITS
    return dtype == torch.float32 and (any_rows or x.numel() <= ONEDNN_MAX_ROWS * x.shape[-1])


def packed_weight(layer: nn.Linear, rows: int) -> torch.Tensor:
    """Return layer's weight in oneDNN's layout (made once per weight; rows: a size hint, any works)."""
    weight = layer.weight
    try:
        stamp = (weight.data_ptr(), weight._version)
    except RuntimeError:  # an inference tensor keeps no version; it cannot change outside inference
        stamp = (weight.data_ptr(), None)
    entry = _packed.get(layer)
    if entry is None or entry[0] != stamp:
        entry = _packed[layer] = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows))
    return entry[1]


def _onednn_weight(layer: nn.Linear, flat: torch.Tensor) -> torch.Tensor:
    """The weight oneDNN reads for flat (rows, K): packed for bf16, the module's own for fp32."""
    return packed_weight(layer, flat.shape[0]) if flat.dtype == torch.bfloat16 else layer.weight


def linear(x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Return layer(x) (+ residual): x (..., K) -> (..., N); residual (..., N) is left unchanged."""
    if hooked(layer):
        return layer(x) if residual is None else residual + layer(x)
    if _onednn_runs(x, layer) and (residual is None or residual.dtype == x.dtype):
        flat = x.reshape(-1, x.shape[-1])
        weight = _onednn_weight(layer, flat)
        if residual is None:
            out = _onednn_linear(flat, weight, layer.bias, "none", [], "")
        else:  # the residual sum as the GEMM's post-op
            other = residual.reshape(flat.shape[0], -1)
            out = _onednn_linear.binary(flat, other, weight, layer.bias, "add")
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
    """Return gelu(layer(x)) with the activation fused into the GEMM where oneDNN runs it."""
    if _onednn_runs(x, layer, any_rows=True):
        flat = x.reshape(-1, x.shape[-1])
        weight = _onednn_weight(layer, flat)
        out = _onednn_linear(flat, weight, layer.bias, "gelu", [], approximate)
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

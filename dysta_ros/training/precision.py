"""Where a trainer computes: `--device`, and `--dtype` as mixed precision over float32 weights.

Both trainers (this package's VLA and the SmolVLA-architecture policy) keep their weights and
optimizer moments in float32 on the device and save float32 checkpoints; `--dtype bfloat16` /
`float16` runs the forward pass under `torch.autocast` (matmuls and attention in that dtype),
the usual way to train in reduced precision (weights rounded to bfloat16 after every AdamW step
would lose most small updates). float16 adds loss scaling, so small gradients do not underflow.
Batches and random draws are made on the CPU with the trainers' CPU generators, then moved: the
same seed draws the same noise on every device.
"""

from __future__ import annotations

import torch

from dysta_ros.policy.devices import DTYPES, check_device


class Precision:
    """The device and compute dtype of one training run, and its optimizer step."""

    def __init__(self, device: str = "cpu", dtype: str = "float32"):
        self.device = check_device(device, dtype)  # the one device check: one line naming what exists
        self.dtype = DTYPES[dtype]
        self.mixed = self.dtype != torch.float32
        # loss scaling only where float16's narrow exponent needs it; a no-op otherwise
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        """The context the forward pass and the loss run in."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.mixed)

    def to_device(self, batch):
        """A batch (tensors, and lists/dicts of them) on the training device."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {key: self.to_device(value) for key, value in batch.items()}
        if isinstance(batch, list):
            return [self.to_device(value) for value in batch]
        return batch

    def step(self, loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             max_grad_norm: float = 1.0) -> None:
        """Backward, clip the gradient norm (unscaled), and one optimizer step."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        """The loss scale's state (plain numbers: it goes into training_state.json); empty unless float16."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)

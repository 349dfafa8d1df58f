"""The fixed-shape denoising loop captured as a CUDA graph and replayed (speed option cuda_graphs).

Ten Euler steps through 16 expert layers are thousands of small kernels; on a GPU their launch
cost, not their arithmetic, sets the time. A chunk's shapes depend only on the prefix length,
the chunk and the step schedule, so the loop is captured once per such shape and replayed with
the new prefix context and noise copied into its static inputs. Same kernels, same numbers as
the eager loop. CUDA only; nothing here runs on a CPU.
"""

from __future__ import annotations

import torch


class GraphedDenoiser:
    """Captured denoising loops of one SmolVLAModel, one per (prefix length, noise shape, schedule)."""

    def __init__(self, model):
        self.model = model
        self.graphs: dict = {}

    @torch.inference_mode()  # the static inputs are inference tensors: copy_ into them needs it
    def __call__(self, context, pad_mask: torch.Tensor, noise: torch.Tensor, steps: int,
                 start_time: float) -> torch.Tensor:
        key = (tuple(pad_mask.shape), tuple(noise.shape), steps, start_time)
        entry = self.graphs.get(key) or self._capture(key, context, pad_mask, noise, steps, start_time)
        graph, static_context, static_mask, static_noise, output = entry
        for (key_in, value_in), (key_new, value_new) in zip(static_context, context):
            key_in.copy_(key_new)
            value_in.copy_(value_new)
        static_mask.copy_(pad_mask)
        static_noise.copy_(noise)
        graph.replay()
        return output.clone()

    def _capture(self, key, context, pad_mask, noise, steps, start_time):
        static_context = [(k.clone(), v.clone()) for k, v in context]
        static_mask, static_noise = pad_mask.clone(), noise.clone()

        def run():
            return self.model.denoise(static_context, static_mask, static_noise, steps=steps,
                                      start_time=start_time)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: allocator pools and the time-embedding cache
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = run()
        self.graphs[key] = (graph, static_context, static_mask, static_noise, output)
        return self.graphs[key]

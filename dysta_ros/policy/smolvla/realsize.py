"""SmolVLA at the real smolvla_base size with random weights, built without any download.

The geometry is LeRobot 0.4.4's smolvla_base config.json and the SmolVLM2-500M backbone config
(smolvla_base.json, copied from test/data/smolvla_base_manifest.json: 450,046,176 parameters).
The cameras are the caller's. The tokenizer is a word-level stand-in built here: token ids do
not change timing, only the number of valid language tokens does (one per word here; the real
tokenizer gives about as many for a short task), and every prompt is padded to 48 slots anyway.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from dysta_ros.policy.smolvla.checkpoint import CheckpointFiles, Normalizer
from dysta_ros.policy.smolvla.config import parse_smolvla_config, parse_vlm_config
from dysta_ros.policy.smolvla.model import SmolVLAModel

GEOMETRY_FILE = Path(__file__).with_name("smolvla_base.json")
# Robot-unit statistics of a 6-joint arm (degrees), the same kind LeRobot's timing script uses.
STATE_MEAN = [2.5, -48.0, 61.0, 72.5, -3.0, 14.0]
STATE_STD = [14.0, 21.0, 17.5, 11.0, 28.0, 9.5]
ACTION_MEAN = [3.1, -46.5, 59.0, 70.0, -2.2, 16.5]
ACTION_STD = [15.5, 22.0, 18.0, 12.5, 30.0, 11.0]


def stand_in_tokenizer(pad_token: str = "<|im_end|>"):
    """A word-level tokenizer with SmolVLM2's special tokens at their ids (pad = 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, pad_token: 2, "<unk>": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def real_size_policy(name: str = "smolvla_base", cameras: dict[str, tuple[int, int]] | None = None,
                     seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32):
    """Return a SmolVLAPolicy of the real size, random weights (seeded), cameras {name: (h, w)}."""
    from dysta_ros.policy.smolvla.policy import SmolVLAPolicy

    geometry = json.loads(GEOMETRY_FILE.read_text())
    cameras = cameras or {"main": (480, 640), "wrist": (480, 640)}
    policy_cfg = dict(geometry["policy_config"])
    features = {f"observation.images.{cam}": {"type": "VISUAL", "shape": [3, h, w]}
                for cam, (h, w) in cameras.items()}
    features["observation.state"] = {"type": "STATE", "shape": [len(STATE_MEAN)]}
    policy_cfg["input_features"] = features
    policy_cfg["output_features"] = {"action": {"type": "ACTION", "shape": [len(ACTION_MEAN)]}}
    source = Path(f"<{name}>")
    cfg = parse_smolvla_config(policy_cfg, source / "config.json")
    vlm = parse_vlm_config(geometry["vlm_config"], source / "vlm/config.json")
    torch.manual_seed(seed)
    with torch.device(device):
        model = SmolVLAModel(cfg, vlm).to(dtype).eval()
    count = sum(p.numel() for p in model.parameters())
    stats = lambda mean, std: {"mean": torch.tensor(mean), "std": torch.tensor(std)}  # noqa: E731
    files = CheckpointFiles(
        directory=source, vlm_dir=source / "vlm", cfg=cfg, vlm=vlm, weights={},
        dtype_layout=dict(Counter(str(p.dtype).removeprefix("torch.") for p in model.state_dict().values())),
        parameter_count=count,
        state_normalizer=Normalizer("MEAN_STD", stats(STATE_MEAN, STATE_STD), 1e-8),
        action_normalizer=Normalizer("MEAN_STD", stats(ACTION_MEAN, ACTION_STD), 1e-8),
        tokenizer=stand_in_tokenizer(),
    )
    return SmolVLAPolicy(files, model, device)

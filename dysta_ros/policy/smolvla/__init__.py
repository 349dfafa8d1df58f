"""LeRobot SmolVLA checkpoints run by the project's own code (no LeRobot import)."""

from dysta_ros.policy.smolvla.policy import SmolVLAPolicy, SmolVLASpec, load_smolvla

__all__ = ["SmolVLAPolicy", "SmolVLASpec", "load_smolvla"]

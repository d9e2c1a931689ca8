"""The three pre-training objectives (one file each) and their weighted mix."""

from raysearch.objectives.mix import LossOutput, Mix, ObjectiveConfig, mix_loss

__all__ = ["LossOutput", "Mix", "ObjectiveConfig", "mix_loss"]

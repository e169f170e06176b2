"""cm2 trainer: applies one CM2/GRPO policy update (LoRA) per Temporal activity `updatePolicy`."""

__version__ = "0.1.0"

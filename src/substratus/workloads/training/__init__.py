"""The fine-tuning trainer's parts (``substratus.workloads.trainer`` is the entry point).

``config`` reads the params, ``inputs`` checks the base model and renders the dataset rows,
``checkpoints`` picks what a retry resumes from, ``loop`` loads the model and trains,
``outputs`` writes artifacts/. Only ``loop`` and ``outputs`` import torch/transformers/peft,
inside their functions.
"""

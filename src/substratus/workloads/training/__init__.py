"""The fine-tuning trainer's parts (``substratus.workloads.trainer`` is the entry point).

``config`` reads the params, ``inputs`` checks the base model and renders the dataset rows,
``tokens`` turns texts into batches, ``checkpoints`` picks what a retry resumes from,
``loop`` loads the model and trains, ``outputs`` writes artifacts/. Only ``tokens``, ``loop``
and ``outputs`` import torch/transformers/peft, inside their functions.
"""

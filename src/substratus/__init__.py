"""Substratus: import, fine-tune, serve models and run notebooks, locally or on Kubernetes."""

__version__ = "0.1.0"

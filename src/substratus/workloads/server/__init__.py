"""The OpenAI-compatible model server (images ``substratusai/model-server``, ``basaran``).

``python -m substratus.workloads.server`` serves the mounted model (``/model/saved`` or
``model/``) on ``$PORT``: ``/v1/completions``, ``/v1/chat/completions`` (streaming too),
``/v1/embeddings``, ``/v1/models``; ``GET /`` answers 200 once the model is loaded.
Engines: transformers (CPU/GPU, continuous batching), vLLM (GPU), llama.cpp (GGUF).
Params and environment: see ``config.py``. Layout: ``app.py`` (HTTP), ``protocol.py``
(wire format), ``batching.py`` (the scheduler), ``engines/`` (one module per engine).
"""

"""``python -m substratus.workloads.server.llama_cpp``: the server with llama.cpp as its engine
unless ``params.engine`` says otherwise. It stands in for the original project's
``substratusai/model-server-llama-cpp`` image (``core/images.py``), which served GGUF files
with llama-cpp-python."""

import sys

from substratus.workloads.server.app import main

IMAGE = "substratusai/model-server-llama-cpp"

if __name__ == "__main__":
    sys.exit(main(default_engine="llamacpp", engine_origin=f"the image {IMAGE}"))

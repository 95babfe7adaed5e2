"""tlite-edge: T-lite-instruct-0.1 converted exactly to GGUF and run on llama.cpp."""

__version__ = "0.1.0"

"""Shipping a GGUF: desktop apps (Ollama, LM Studio, Jan, GPT4All), Hub releases, metadata checks."""

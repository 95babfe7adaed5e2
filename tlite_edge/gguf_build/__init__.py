"""Hugging Face Llama -> GGUF: tensor table, metadata, vocab and a streaming writer."""

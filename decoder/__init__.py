"""Qwen3 LLM decoder: prompt, KV cache, generation, recognizer."""

"""Qwen3-ASR audio front end and AuT audio encoder."""

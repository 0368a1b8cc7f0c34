"""Tests of the Qwen3-ASR front end, audio encoder and checkpoint loading."""

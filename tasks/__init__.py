"""Thin Prefect tasks over ttsf_core: generate, verify, select-and-write."""

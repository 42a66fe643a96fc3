"""Prefect flows: orchestration only (no tensor math, no file formats)."""

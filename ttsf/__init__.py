"""The `ttsf` command line: ttsf_core's library driven by the Prefect flows."""

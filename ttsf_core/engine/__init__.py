"""The search engine: one loop over rounds (search_engine), the jobs it hands an executor (jobs), the
executor that runs them on threads (executors), and the work itself: generating candidates (generate,
and on a denoising path, path_generation), grading them (grading), and retrying a verifier's transient
failures (retry). It reads and writes through ttsf_core.storage and is driven by ttsf_core.usecases."""

"""A tiny model for the autoscaling benchmark's unit tests (bench/ on the path): 8 sequences,
a 10 s cold start, so that schedules can be enumerated or replayed in seconds."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from autoscale_workloads import BASE_MIX, ModelSize

TINY = ModelSize(
    "tiny",
    gpus=1,
    max_seqs=8,
    kv_capacity=8 * BASE_MIX.kv_tokens,
    step_base=0.01,
    step_per_seq=0.001,
    prefill_tokens_per_second=50_000,
    cold_start_seconds=10,
    ttft_slo=2.0,
    tpot_slo=1.0,
)

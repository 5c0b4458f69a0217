"""The real-weights loader (worker/loading.py) against a snapshot on disk in the documented layout,
made by saving the tiny random pipeline: diffusers/transformers loading code, offline, on a CPU."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from worker.loading import WeightsNotFoundError, find_llama_dir, load_hidream
from worker.settings import WorkerSettings
from worker.tiny import build_tiny_pipeline
from worker.variants import VARIANTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """root/HiDream-I1-Full (no Llama inside) and root/Meta-Llama-3.1-8B-Instruct beside it."""
    root = tmp_path_factory.mktemp("weights")
    pipe = build_tiny_pipeline(VARIANTS["full"], 32)
    weights = root / "HiDream-I1-Full"
    pipe.save_pretrained(weights)  # type: ignore[attr-defined]
    for part in ("text_encoder_4", "tokenizer_4"):  # the hub repos do not ship the Llama encoder
        shutil.rmtree(weights / part)
    pipe.text_encoder_4.save_pretrained(root / "Meta-Llama-3.1-8B-Instruct")  # type: ignore[attr-defined]
    pipe.tokenizer_4.save_pretrained(root / "Meta-Llama-3.1-8B-Instruct")  # type: ignore[attr-defined]
    yield weights


@pytest.mark.parametrize(
    ("variant", "scheduler", "shift"), [("full", "UniPCMultistepScheduler", 3.0), ("dev", "FlowMatchLCMScheduler", 6.0)]
)
def test_loads_a_local_snapshot_with_the_variants_sampler(
    snapshot: Path, variant: str, scheduler: str, shift: float
) -> None:
    pipe = load_hidream(WorkerSettings(variant=variant, weights_dir=snapshot, device="cpu"))  # type: ignore[arg-type]
    loaded = pipe.scheduler  # type: ignore[attr-defined]
    assert type(loaded).__name__ == scheduler
    assert (loaded.config.flow_shift if variant == "full" else loaded.config.shift) == shift
    assert pipe.transformer.dtype == torch.bfloat16  # type: ignore[attr-defined]
    assert pipe.text_encoder_4.config._attn_implementation == "eager"  # type: ignore[attr-defined]
    pipe.default_sample_size = 32  # type: ignore[attr-defined]  # the saved tiny VAE: 32x32 pictures, fast in bf16
    out = pipe(prompt="a cat", num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 1


def test_the_llama_encoder_is_found_inside_beside_or_where_configured(snapshot: Path, tmp_path: Path) -> None:
    beside = snapshot.parent / "Meta-Llama-3.1-8B-Instruct"
    assert find_llama_dir(WorkerSettings(weights_dir=snapshot)) == beside
    inside = tmp_path / "weights"
    shutil.copytree(snapshot, inside)
    shutil.copytree(beside, inside / "llama")
    assert find_llama_dir(WorkerSettings(weights_dir=inside)) == inside / "llama"
    assert find_llama_dir(WorkerSettings(weights_dir=inside, llama_dir=beside)) == beside


def test_missing_weights_name_where_they_were_looked_for(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="model_index.json"):
        load_hidream(WorkerSettings(weights_dir=tmp_path, device="cpu"))
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "llama")):
        load_hidream(WorkerSettings(weights_dir=tmp_path, device="cpu"))

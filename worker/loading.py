"""Building the pipeline a worker serves: real HiDream-I1 weights from local disk (never from the
network), or tiny mode; and the sampler each variant was released with.

Expected layout for real weights (`--weights-dir DIR`):

    DIR/                                  a snapshot of HiDream-ai/HiDream-I1-<Full|Dev|Fast>:
      model_index.json  scheduler/  transformer/  vae/
      text_encoder/  text_encoder_2/  text_encoder_3/  tokenizer/  tokenizer_2/  tokenizer_3/
      llama/                              (one option) Meta-Llama-3.1-8B-Instruct: config.json,
                                          tokenizer.json, tokenizer_config.json, *.safetensors
    DIR/../Meta-Llama-3.1-8B-Instruct/    (the other) the same, beside the weights, so one copy
                                          serves the Full, Dev and Fast directories
    or --llama-dir / WORKER_LLAMA_DIR     anywhere else

The HiDream repos do not contain the Llama encoder (a separately licensed, gated download), so it
is always passed to the pipeline explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from worker.inference import Pipeline
from worker.settings import WorkerSettings
from worker.variants import Variant


class WeightsNotFoundError(Exception):
    pass


def libraries() -> tuple[Any, Any]:
    """diffusers and transformers, imported on first use (they take seconds) and typed as Any:
    both ship py.typed but leave their constructors unannotated, so this is the typing boundary."""
    import diffusers
    import transformers

    return diffusers, transformers


def make_scheduler(variant: Variant) -> object:
    """The variant's sampler as HiDream's inference.py builds it (1000 train steps, fixed shift,
    no dynamic shifting), with the diffusers classes that implement HiDream's own schedulers."""
    d, _ = libraries()
    if variant.sampler == "flow_unipc":
        return d.UniPCMultistepScheduler(
            num_train_timesteps=1000,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=variant.shift,
        )
    return d.FlowMatchLCMScheduler(num_train_timesteps=1000, shift=variant.shift, use_dynamic_shifting=False)


def llama_candidates(settings: WorkerSettings) -> list[Path]:
    if settings.llama_dir is not None:
        return [settings.llama_dir]
    assert settings.weights_dir is not None
    weights = settings.weights_dir
    return [weights / "llama", weights.parent / "Meta-Llama-3.1-8B-Instruct"]


def find_llama_dir(settings: WorkerSettings) -> Path:
    candidates = llama_candidates(settings)
    for path in candidates:
        if (path / "config.json").is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise WeightsNotFoundError(f"no Llama-3.1-8B-Instruct encoder found (looked in: {tried})")


def load_pipeline(settings: WorkerSettings) -> Pipeline:
    """The pipeline factory the CLI uses (tests pass their own)."""
    if settings.tiny:
        from worker.tiny import build_tiny_pipeline

        return build_tiny_pipeline(settings.spec, settings.tiny_sample_size, settings.resolved_device)
    return load_hidream(settings)


def load_hidream(settings: WorkerSettings) -> Pipeline:
    import torch

    d, t = libraries()

    weights = settings.weights_dir
    if weights is None or not (weights / "model_index.json").is_file():
        raise WeightsNotFoundError(f"no HiDream snapshot (model_index.json) in {weights}")
    llama_dir = find_llama_dir(settings)
    dtype = torch.bfloat16
    tokenizer_4 = t.PreTrainedTokenizerFast.from_pretrained(str(llama_dir), local_files_only=True)
    # The pipeline asks for hidden states (and attentions) on every call, so the config need not.
    text_encoder_4 = t.LlamaForCausalLM.from_pretrained(
        str(llama_dir),
        # The pipeline asks for attentions, which SDPA cannot return (it logs a warning per call);
        # at HiDream's 128 tokens eager attention costs nothing measurable.
        attn_implementation="eager",
        dtype=dtype,
        local_files_only=True,
    )
    pipe = d.HiDreamImagePipeline.from_pretrained(
        str(weights),
        scheduler=make_scheduler(settings.spec),
        tokenizer_4=tokenizer_4,
        text_encoder_4=text_encoder_4,
        dtype=dtype,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(settings.resolved_device)
    return cast(Pipeline, pipe)

"""Tiny mode: a small random-weight HiDreamImagePipeline built entirely offline, so the real
diffusers code path (four text encoders, MoE transformer, scheduler, VAE decode) runs on a CPU
in about a second. Configs follow diffusers' own HiDream pipeline test; the tokenizers are made
locally with `tokenizers` instead of being downloaded. The pictures are noise."""

from __future__ import annotations

from typing import Any, cast

from worker.inference import Pipeline
from worker.loading import libraries, make_scheduler
from worker.variants import Variant

# Special tokens first (ids 0..3), then one token per printable ASCII character: prompts that
# differ give different embeddings, so they give different pictures.
_SPECIALS = ("<unk>", "<pad>", "<s>", "</s>")
_VOCAB = (*_SPECIALS, *(chr(c) for c in range(33, 127)))
_TEXT_VOCAB_SIZE = 128  # >= len(_VOCAB), for the T5 and Llama embedding tables
_MAX_TOKENS = 128  # HiDream's max_sequence_length


def _char_tokenizer() -> Any:
    """A character-level WordLevel tokenizer that adds <s> ... </s> like the real ones."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    _, transformers = libraries()
    vocab = {token: i for i, token in enumerate(_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=_MAX_TOKENS,
    )


def build_tiny_pipeline(variant: Variant, sample_size: int, device: str = "cpu") -> Pipeline:
    """Seeded, so every tiny worker has the same weights and a seed gives the same picture anywhere."""
    import torch

    d, t = libraries()
    torch.manual_seed(0)
    # caption_channels = [T5 d_model, Llama hidden_size]; llama_layers must exist in the Llama.
    transformer = d.HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[32, 16],
        text_emb_dim=64,
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(32, 32),
        llama_layers=(0, 1),
    )
    vae = d.AutoencoderKL(scaling_factor=0.3611, shift_factor=0.1159)
    clip_config = t.CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=1000,
        projection_dim=32,
        max_position_embeddings=_MAX_TOKENS,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,  # CLIP pools at the first </s>
    )
    clip_l = t.CLIPTextModelWithProjection(clip_config)
    clip_g = t.CLIPTextModelWithProjection(clip_config)
    t5_config = t.T5Config(vocab_size=_TEXT_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    t5 = t.T5EncoderModel(t5_config)
    llama = t.LlamaForCausalLM(
        t.LlamaConfig(
            vocab_size=_TEXT_VOCAB_SIZE,
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            # the pipeline asks for output_attentions, which SDPA cannot give (it logs per call)
            attn_implementation="eager",
        )
    )
    # Freshly built modules are in training mode: dropout makes T5 non-deterministic and the
    # HiDream transformer un-patchifies differently (wrong output shape) until .eval().
    for module in (transformer, vae, clip_l, clip_g, t5, llama):
        module.eval()
    pipe = d.HiDreamImagePipeline(
        scheduler=make_scheduler(variant),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=_char_tokenizer(),
        text_encoder_2=clip_g,
        tokenizer_2=_char_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=_char_tokenizer(),
        text_encoder_4=llama,
        tokenizer_4=_char_tokenizer(),
        transformer=transformer,
    )
    # Output area is (default_sample_size * vae_scale_factor)^2 and this VAE's scale factor is 1:
    # 32 gives ~32x32-pixel pictures (~1 s for 50 CFG steps on a CPU) instead of 128x128 (~9 s).
    pipe.default_sample_size = sample_size
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return cast(Pipeline, pipe)

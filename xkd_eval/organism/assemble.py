"""Assemble the embedded speech LLM with transformers' own ``Qwen2AudioForConditionalGeneration``:
the Whisper encoder as the audio tower, a seeded random projector, and the text LLM as the language
model (a llama ``text_config``).

The text path must reproduce the LLM exactly (the anchor of the forgetting measure), so:

- the audio tower is a ``Qwen2AudioEncoder`` with Whisper's dimensions; its parameters have the same
  names and shapes as ``WhisperEncoder``'s (its extra average pooler has no parameters), so the copy is
  one-to-one and checked;
- the three audio tokens are *appended* to the LLM's vocabulary: existing rows of the embeddings and of
  the output head are untouched, so the logits of every existing token are the LLM's, bit for bit. The
  new rows are the mean of the existing ones. For the output head this bounds each new token's
  probability by 1/V (Jensen: the mean row's logit is the mean logit, and logsumexp >= log V + mean),
  so log-probabilities over the enlarged vocabulary move by at most log(1 + 3/V) (6e-5 nats for V=49152).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from xkd_eval.organism.convert import ConversionError, is_complete, publishing
from xkd_eval.organism.parts import COMPLETE_MARKER

AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
AUDIO_TOKENS = (AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS)
AUDIO_PLACEHOLDER = AUDIO_BOS + AUDIO_TOKEN + AUDIO_EOS

_SYSTEM_DEFAULT = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.DOTALL)


def default_system_prompt(chat_template: str | None) -> str | None:
    """The system prompt a ChatML template inserts when the conversation has none (SmolLM2: "You are a
    helpful AI assistant named SmolLM, trained by Hugging Face"), or None."""
    if not chat_template:
        return None
    match = _SYSTEM_DEFAULT.search(chat_template)
    return match.group(1) if match else None


def audio_chat_template(system_prompt: str | None = None) -> str:
    """A ChatML template whose content may be a string or a list of parts; an audio part renders as
    ``<|audio_bos|><|AUDIO|><|audio_eos|>`` and a newline, a text part as its text. A text-only message
    renders exactly as the LLM's own template renders the same text as a string."""
    system = ""
    if system_prompt is not None:
        literal = system_prompt.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
        system = (
            "{% if loop.first and messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\\n" + literal + "<|im_end|>\\n' }}{% endif %}"
        )
    return (
        "{% for message in messages %}" + system + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part %}"
        "{{ '" + AUDIO_PLACEHOLDER + "\\n' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def add_audio_tokens(tokenizer) -> list[int]:
    """Append the audio special tokens to a tokenizer (those it lacks); their ids, in AUDIO_TOKENS order."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in AUDIO_TOKENS if t not in vocab]
    if missing:  # add_tokens (not add_special_tokens, whose keywords differ between transformers 4 and 5)
        from tokenizers import AddedToken

        tokens = [AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=True) for t in missing]
        tokenizer.add_tokens(tokens, special_tokens=True)
    return tokenizer.convert_tokens_to_ids(list(AUDIO_TOKENS))


def encoder_config_from_whisper(whisper_config):
    """A ``Qwen2AudioEncoderConfig`` with the Whisper encoder's dimensions."""
    from transformers import Qwen2AudioEncoderConfig

    return Qwen2AudioEncoderConfig(
        num_mel_bins=whisper_config.num_mel_bins,
        encoder_layers=whisper_config.encoder_layers,
        encoder_attention_heads=whisper_config.encoder_attention_heads,
        encoder_ffn_dim=whisper_config.encoder_ffn_dim,
        d_model=whisper_config.d_model,
        max_source_positions=whisper_config.max_source_positions,
        activation_function=whisper_config.activation_function,
        scale_embedding=whisper_config.scale_embedding,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
    )


def copy_whisper_encoder(whisper_encoder, audio_tower) -> None:
    """Whisper encoder -> Qwen2Audio encoder: same parameter names and shapes, checked, copied."""
    import torch

    source, target = whisper_encoder.state_dict(), audio_tower.state_dict()
    if set(source) != set(target):
        raise ConversionError(
            "the Whisper encoder and the Qwen2-Audio encoder differ in parameters: "
            f"only in Whisper {sorted(set(source) - set(target))[:5]}, "
            f"only in Qwen2-Audio {sorted(set(target) - set(source))[:5]}"
        )
    for name, value in source.items():
        if value.shape != target[name].shape:
            raise ConversionError(f"encoder parameter {name}: {tuple(value.shape)} vs {tuple(target[name].shape)}")
    with torch.no_grad():
        audio_tower.load_state_dict(source, strict=True)


def init_projector(projector, text_embeddings, seed: int) -> None:
    """Seeded random projector, scaled so that unit-variance encoder features (they leave a LayerNorm)
    come out with the root-mean-square of the LLM's token embeddings; zero bias."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    linear = projector.linear
    target_rms = float(text_embeddings.float().pow(2).mean().sqrt())
    std = target_rms / linear.in_features**0.5
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * std)
        linear.bias.zero_()


def build_speech_llm(whisper_model, llm, tokenizer, feature_extractor, seed: int = 0) -> tuple[Any, Any]:
    """(Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor) from loaded parts. The tokenizer gains
    the audio tokens (in place)."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    old_vocab = llm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_vocab:
        raise ConversionError(f"the tokenizer has {len(tokenizer)} tokens, more than the LLM's {old_vocab} rows")
    _, audio_id, _ = add_audio_tokens(tokenizer)
    new_vocab = max(old_vocab, len(tokenizer))

    text_config = llm.config.to_dict()
    text_config["vocab_size"] = new_vocab
    text_config.pop("architectures", None)
    encoder = whisper_model.get_encoder() if hasattr(whisper_model, "get_encoder") else whisper_model.encoder
    config = Qwen2AudioConfig(
        audio_config=encoder_config_from_whisper(whisper_model.config).to_dict(),
        text_config=text_config,
        audio_token_index=audio_id,
    )
    config.dtype = torch.float32
    model = Qwen2AudioForConditionalGeneration(config).eval()

    copy_whisper_encoder(encoder, model.model.audio_tower)
    language_model = model.model.language_model
    source = llm.model.state_dict()
    target = language_model.state_dict()
    if set(source) != set(target):
        raise ConversionError(
            f"the LLM's decoder and the assembled language model differ: {sorted(set(source) ^ set(target))[:5]}"
        )
    embed_key = "embed_tokens.weight"
    with torch.no_grad():
        old_embed = source[embed_key]
        new_embed = torch.empty(new_vocab, old_embed.shape[1], dtype=old_embed.dtype)
        new_embed[:old_vocab] = old_embed
        new_embed[old_vocab:] = old_embed.mean(dim=0)
        language_model.load_state_dict({**source, embed_key: new_embed}, strict=True)
        old_head = llm.get_output_embeddings().weight
        new_rows = old_head.mean(dim=0, keepdim=True).expand(new_vocab - old_vocab, -1)
        model.lm_head.weight.copy_(torch.cat([old_head, new_rows]))
    init_projector(model.model.multi_modal_projector, old_embed, seed)

    generation = llm.generation_config.to_dict()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if generation.get(key) is not None:
            setattr(model.generation_config, key, generation[key])
            setattr(model.config, key, generation[key])

    template = audio_chat_template(default_system_prompt(tokenizer.chat_template))
    tokenizer.chat_template = template
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=template,
        audio_token=AUDIO_TOKEN,
        audio_bos_token=AUDIO_BOS,
        audio_eos_token=AUDIO_EOS,
    )
    return model, processor


def assemble_speech_llm(whisper_dir: str | Path, llm_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Whisper (HF folder: model + processor) + a llama LLM (HF folder: model + tokenizer with a chat
    template) -> a saved ``Qwen2AudioForConditionalGeneration`` with its ``Qwen2AudioProcessor``, the
    projector randomly initialised from ``seed``. Idempotent for the same inputs and seed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

    whisper_dir, llm_dir, out_dir = Path(whisper_dir), Path(llm_dir), Path(out_dir)
    marker = out_dir / COMPLETE_MARKER
    if is_complete(out_dir, "speech-llm"):
        info = json.loads(marker.read_text())
        if info.get("seed") == seed:
            return out_dir
        raise ConversionError(f"{out_dir} was assembled with seed {info.get('seed')}, not {seed}; use another folder")
    started = time.perf_counter()
    whisper = WhisperModel.from_pretrained(whisper_dir)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    if llm.config.model_type != "llama":
        raise ConversionError(f"{llm_dir} holds a {llm.config.model_type!r} model; the organism expects llama")
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model, processor = build_speech_llm(whisper, llm, tokenizer, feature_extractor, seed=seed)
    with publishing(
        out_dir, "speech-llm", started=started, whisper=str(whisper_dir), llm=str(llm_dir), seed=seed
    ) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out_dir


__all__ = [
    "AUDIO_PLACEHOLDER",
    "AUDIO_TOKENS",
    "add_audio_tokens",
    "assemble_speech_llm",
    "audio_chat_template",
    "build_speech_llm",
    "copy_whisper_encoder",
    "default_system_prompt",
]

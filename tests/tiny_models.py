"""Tiny randomly initialised instances of the real architectures, with tokenizers built locally (no hub).

Saved with ``save_pretrained`` into a folder, so tests load them through the same ``from_pretrained``
code path a hub id takes.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}Audio {{ loop.index }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
CORPUS = [
    "The answer is A. The answer is B. The answer is C. The answer is D.",
    "Which is a mammal? A whale is a mammal. Sharks are fish. Paris is the capital of France.",
    "Listen to the audio and respond to the question or request it contains.",
    "user assistant system yes no plausible sentence option question answer audio speech text",
]


def build_tokenizer(save_dir: Path | None = None, corpus: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator((corpus or CORPUS) * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip
    values.update(overrides)
    return LlamaConfig(**values)


def build_text_model(save_dir: Path, seed: int = 0, corpus: list[str] | None = None) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(save_dir, corpus)
    torch.manual_seed(seed)
    config = llama_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(save_dir)
    return save_dir


def build_qwen2_audio(save_dir: Path, seed: int = 0, **text_overrides) -> Path:
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer = build_tokenizer()
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    audio_config = Qwen2AudioEncoderConfig(
        num_mel_bins=80, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16
    )
    text_config = llama_config(
        len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text_overrides
    )
    config = Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config.to_dict(),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    return save_dir

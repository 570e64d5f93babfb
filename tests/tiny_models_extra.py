"""Tiny random instances of more speech-LLM families (Voxtral, Qwen2.5-Omni, Audio Flamingo 3) and of Whisper,
with their tokenizers and processors built locally, saved with ``save_pretrained`` like ``tiny_models``.

Each family gets the special tokens and a chat template of the same shape as its real checkpoint's, so the
adapters run the exact code path (processor, placeholder expansion, audio features) a real checkpoint takes.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

from tiny_models import CORPUS, build_tokenizer, llama_config

# ------------------------------------------------------------------ tokenizers


def build_bpe_tokenizer(
    special: list[str],
    *,
    eos: str,
    pad: str,
    chat_template: str | None = None,
    named: dict[str, str] | None = None,
    vocab_size: int = 400,
    specials_last: bool = False,
    tokenizer_class=None,
    **kwargs,
):
    """A byte-level BPE trained on the shared test corpus, with this family's special tokens (first, or after the
    text tokens with ``specials_last``); ``named`` tokens become tokenizer attributes (``tokenizer.audio_token``
    ...), as model-specific special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[] if specials_last else special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 4, trainer)
    if specials_last:
        core.add_special_tokens(special)
    cls = tokenizer_class or PreTrainedTokenizerFast
    extra = [t for t in special if t not in (eos, pad)]
    return cls(
        tokenizer_object=core,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=extra,
        chat_template=chat_template,
        **(named or {}),
        **kwargs,
    )


# ------------------------------------------------------------------ a text LLM (a cascade's second stage)


def build_text_llm(save_dir: Path, seed: int = 0) -> Path:
    """Like ``tiny_models.build_text_model``, with weights spread wider so greedy answers vary with the prompt."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(save_dir)
    config = llama_config(
        len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, initializer_range=0.2
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(save_dir)
    return save_dir


# ------------------------------------------------------------------ Voxtral (mistral-common tekken tokenizer)

# the control tokens of Voxtral's tekken.json at their real ranks (the processor hard-codes [AUDIO] = 24)
VOXTRAL_SPECIAL = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]",
    13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]",
}  # fmt: skip
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def write_tekken(path: Path, num_special: int = 40) -> int:
    """A tekken.json (v11, with Voxtral's audio section: 16 kHz, 12.5 tokens/s, 30 s chunks) whose vocabulary is
    the 256 bytes plus a few merges from the test corpus; returns the total vocabulary size."""
    vocab = [bytes([i]) for i in range(256)]
    for word in sorted({w for line in CORPUS for w in line.replace(".", " ").replace("?", " ").split()}):
        data = word.encode()
        for end in range(2, len(data) + 1):  # every prefix of every word: a valid rank order for BPE
            if data[:end] not in vocab:
                vocab.append(data[:end])
    special = [
        {"rank": i, "token_str": VOXTRAL_SPECIAL.get(i, f"<SPECIAL_{i}>"), "is_control": True}
        for i in range(num_special)
    ]
    tekken = {
        "config": {
            "pattern": TEKKEN_PATTERN,
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": len(vocab) + num_special,
            "default_num_special_tokens": num_special,
            "version": "v11",
        },
        "vocab": [
            {"rank": i, "token_bytes": base64.b64encode(b).decode(), "token_str": b.decode("latin-1")}
            for i, b in enumerate(vocab)
        ],
        "special_tokens": special,
        "audio": {
            "sampling_rate": 16_000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": 30.0,
        },
    }
    path.write_text(json.dumps(tekken))
    return len(vocab) + num_special


def build_voxtral(save_dir: Path, seed: int = 0) -> Path:
    """VoxtralForConditionalGeneration (Whisper-style encoder + Llama) with a mistral-common tekken tokenizer."""
    import torch
    from transformers import (
        MistralCommonBackend,
        VoxtralConfig,
        VoxtralEncoderConfig,
        VoxtralForConditionalGeneration,
        VoxtralProcessor,
        WhisperFeatureExtractor,
    )

    save_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tekken(save_dir / "tekken.json")
    tokenizer = MistralCommonBackend.from_pretrained(str(save_dir))
    VoxtralProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer).save_pretrained(
        save_dir
    )
    audio_config = VoxtralEncoderConfig(
        num_mel_bins=128, hidden_size=16, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )  # the projector reshapes encoder states by intermediate_size = 4 * hidden_size, as in the real model
    text_config = llama_config(vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=11, initializer_range=0.2)
    config = VoxtralConfig(audio_config=audio_config, text_config=text_config.to_dict(), audio_token_id=24)
    torch.manual_seed(seed)
    model = VoxtralForConditionalGeneration(config)
    model.generation_config.update(bos_token_id=1, eos_token_id=2, pad_token_id=11)
    model.save_pretrained(save_dir)
    return save_dir


# ------------------------------------------------------------------ Qwen2.5-Omni

OMNI_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>", "<|vision_bos|>",
    "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>",
]  # fmt: skip
OMNI_NAMED = {
    "audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}  # fmt: skip
TALKER_TOKEN_IDS = [
    "tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id", "vision_start_token_id",
    "vision_end_token_id", "audio_start_token_id", "audio_end_token_id",
]  # fmt: skip
# the shape of Qwen2.5-Omni's template: a default system turn, audio as <|audio_bos|><|AUDIO|><|audio_eos|>
OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif part['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_omni(save_dir: Path, seed: int = 0, *, full: bool = True, specials_last: bool = False) -> Path:
    """Qwen2.5-Omni: ``full`` saves a Qwen2_5OmniForConditionalGeneration checkpoint (model_type qwen2_5_omni,
    weights under ``thinker.``; talker disabled to stay tiny), else the thinker alone (qwen2_5_omni_thinker).
    ``specials_last`` puts the control tokens after the text tokens, as in the real vocabulary (see
    :func:`build_qwen25_teacher`)."""
    import torch
    from transformers import (
        Qwen2_5OmniAudioEncoderConfig,
        Qwen2_5OmniConfig,
        Qwen2_5OmniForConditionalGeneration,
        Qwen2_5OmniProcessor,
        Qwen2_5OmniTextConfig,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2_5OmniVisionEncoderConfig,
        WhisperFeatureExtractor,
    )

    tokenizer = build_bpe_tokenizer(
        OMNI_SPECIAL,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=OMNI_CHAT_TEMPLATE,
        named=OMNI_NAMED,
        specials_last=specials_last,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in OMNI_NAMED.items()}
    feature_extractor = WhisperFeatureExtractor(feature_size=128)
    hidden = 32
    text_config = Qwen2_5OmniTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 1, 1]},
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    audio_config = Qwen2_5OmniAudioEncoderConfig(
        num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16, output_dim=hidden
    )
    vision_config = Qwen2_5OmniVisionEncoderConfig(
        depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden, fullatt_block_indexes=[0]
    )
    thinker_config = Qwen2_5OmniThinkerConfig(
        audio_config=audio_config,
        vision_config=vision_config,
        text_config=text_config,
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("user"),
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
    )  # fmt: skip  (the vision ids are extra keys of the real thinker config, read by its 3D rope)
    torch.manual_seed(seed)
    if full:
        model = Qwen2_5OmniForConditionalGeneration(
            Qwen2_5OmniConfig(
                thinker_config=thinker_config.to_dict(),
                talker_config={name: i for i, name in enumerate(TALKER_TOKEN_IDS)},  # unused: in its vocabulary
                enable_audio_output=False,
            )
        )
    else:
        model = Qwen2_5OmniThinkerForConditionalGeneration(thinker_config)
    model.generation_config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(save_dir)
    if importlib.util.find_spec("torchvision") is not None:  # the full processor needs its video processor
        from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        processor = Qwen2_5OmniProcessor(
            image_processor=Qwen2VLImageProcessor(),
            video_processor=Qwen2VLVideoProcessor(),
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            chat_template=OMNI_CHAT_TEMPLATE,
        )
        processor.save_pretrained(save_dir)
    else:  # what the processor saves for its audio and text parts
        feature_extractor.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
    return save_dir


# Qwen2.5's control tokens in the order of its vocabulary: Omni's audio markers take the ids of the 4th-6th
QWEN25_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
]  # fmt: skip


def build_qwen25_teacher(save_dir: Path, seed: int = 0) -> Path:
    """A text teacher for :func:`build_qwen_omni` (``specials_last``) as Qwen2.5-Instruct is for Qwen2.5-Omni:
    the same text tokens, other control tokens on the ids where Omni keeps its modality markers."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_bpe_tokenizer(
        QWEN25_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>", chat_template=OMNI_CHAT_TEMPLATE, specials_last=True
    )
    tokenizer.save_pretrained(save_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(save_dir)
    return save_dir


# ------------------------------------------------------------------ Audio Flamingo 3

AF3_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>"]
# the shape of AF3's template: chatml, the <sound> placeholder before the text of the turn
AF3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] if part['type'] == 'audio' %}<sound>{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_audioflamingo3(save_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3EncoderConfig,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    tokenizer = build_bpe_tokenizer(AF3_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>", chat_template=AF3_CHAT_TEMPLATE)
    processor = AudioFlamingo3Processor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
        tokenizer=tokenizer,
        chat_template=AF3_CHAT_TEMPLATE,
    )
    text_config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.2, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    audio_config = AudioFlamingo3EncoderConfig(
        num_mel_bins=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    config = AudioFlamingo3Config(
        audio_config=audio_config, text_config=text_config, audio_token_id=tokenizer.convert_tokens_to_ids("<sound>")
    )
    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(config)
    model.generation_config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    return save_dir


# ------------------------------------------------------------------ Whisper (the ASR of a cascade)

# Whisper's special-token block in its real order, after all text tokens (generation takes every id past
# <|notimestamps|> for a timestamp): the language tokens follow <|startoftranscript|> (English first), then the
# task tokens; one language is enough for English transcription
WHISPER_SPECIAL = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
    "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
]  # fmt: skip


def build_whisper(save_dir: Path, seed: int = 0) -> Path:
    """WhisperForConditionalGeneration with a WhisperTokenizer/WhisperProcessor built locally and a multilingual
    generation config (language and task tokens), so ``generate(language="en", task="transcribe")`` works."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    tokenizer = build_bpe_tokenizer(
        WHISPER_SPECIAL,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        specials_last=True,
        tokenizer_class=WhisperTokenizer,
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in WHISPER_SPECIAL}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(
        save_dir
    )
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_target_positions=448, init_std=0.2, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        # never a special token inside the text (as Whisper's suppress list), never end before the first word
        suppress_tokens=[i for tok, i in ids.items() if tok != "<|endoftext|>"],
        begin_suppress_tokens=[eot],
        max_length=24,
    )
    model.save_pretrained(save_dir)
    return save_dir

"""Shared fixtures: audio synthesised on the fly, and small datasets in the real on-disk formats."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA = Path(__file__).parent / "data"


def tone(seconds: float = 0.5, rate: int = 16_000, freq: float = 440.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    if channels == 1:
        return wave.astype(np.float32)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = 16_000, fmt: str = "WAV") -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def write_parquet(path: Path, rows: list[dict]) -> None:
    """A parquet file shaped like the hub's: ``audio`` is a struct of (bytes, path) with HF's Audio feature."""
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if "audio" in rows[0]:
        ds = ds.cast_column("audio", datasets.Audio(sampling_rate=16_000, decode=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


@pytest.fixture(scope="session")
def voicebench_dir(tmp_path_factory) -> Path:
    """A local copy of hlt-lab/voicebench in the hub's layout: CONFIG/SPLIT-00000-of-00001.parquet."""
    root = tmp_path_factory.mktemp("voicebench")

    def audio(i: int, rate: int = 16_000, channels: int = 1) -> dict:
        return {"bytes": wav_bytes(tone(0.3 + 0.1 * i, rate=rate, channels=channels, seed=i), rate), "path": f"{i}.wav"}

    write_parquet(
        root / "openbookqa" / "test-00000-of-00001.parquet",
        [
            {
                "audio": audio(0),
                "prompt": "Which is a mammal?\nA. shark\nB. whale\nC. trout\nD. squid",
                "reference": "B",
            },
            {
                "audio": audio(1, rate=44_100, channels=2),
                "prompt": "What melts ice?\nA. heat\nB. cold\nC. dark\nD. wind",
                "reference": "A",
            },
            {
                "audio": {"bytes": b"RIFF-not-really-audio", "path": "broken.wav"},
                "prompt": "Broken?\nA. a\nB. b\nC. c\nD. d",
                "reference": "C",
            },
        ],
    )
    from xkd_eval.tasks.voicebench import MMSU_DOMAINS

    for domain in MMSU_DOMAINS:
        n = {"law": 2, "physics": 3}.get(domain, 1)
        write_parquet(
            root / "mmsu" / f"{domain}-00000-of-00001.parquet",
            [
                {"audio": audio(i), "prompt": f"{domain} q{i}\nA. w\nB. x\nC. y\nD. z", "reference": "ABCD"[i % 4]}
                for i in range(n)
            ],
        )
    for accent in ("usa", "gbr"):
        write_parquet(
            root / "sd-qa" / f"{accent}-00000-of-00001.parquet",
            [{"audio": audio(0), "prompt": f"capital of France ({accent})?", "reference": "Paris"}],
        )
    write_parquet(
        root / "bbh" / "test-00000-of-00001.parquet",
        [
            {"id": "sports_understanding_3", "audio": audio(0), "prompt": "Is it plausible?", "reference": "yes"},
            {"id": "hyperbaton_7", "audio": audio(1), "prompt": "Which order?", "reference": "(B)"},
            {"id": "bbh_navigate_0042", "audio": audio(0), "prompt": "Back at the start?", "reference": "no"},
            {"id": "bbh_date_understanding_0001", "audio": audio(1), "prompt": "Which date?", "reference": "(A)"},
        ],
    )
    return root


@pytest.fixture(scope="session")
def voicebench_hub_snapshot(voicebench_dir, tmp_path_factory) -> Path:
    """The same files plus the hub's README with ``configs:``, as a snapshot of the repository has."""
    import shutil

    root = tmp_path_factory.mktemp("voicebench_hub") / "voicebench"
    shutil.copytree(voicebench_dir, root)
    lines = ["---", "configs:"]
    for config_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        lines.append(f"- config_name: {config_dir.name}")
        lines.append("  data_files:")
        for parquet in sorted(config_dir.glob("*.parquet")):
            split = parquet.name.split("-")[0]
            lines.append(f"  - split: {split}")
            lines.append(f"    path: {config_dir.name}/{parquet.name}")
    lines.append("---")
    (root / "README.md").write_text("\n".join(lines) + "\n# VoiceBench (test snapshot)\n")
    return root


@pytest.fixture()
def mmau_dir(tmp_path) -> Path:
    """MMAU-mini's layout: mmau-test-mini.json beside test-mini-audios/<id>.wav."""
    import soundfile as sf

    audio_dir = tmp_path / "test-mini-audios"
    audio_dir.mkdir()
    records = []
    for i, task in enumerate(("sound", "music", "speech")):
        item_id = f"id-{i}"
        if i != 2:  # the third item's audio is missing on purpose
            sf.write(audio_dir / f"{item_id}.wav", tone(0.4, rate=22_050, seed=i), 22_050)
        records.append(
            {
                "id": item_id,
                "audio_id": f"./test-mini-audios/{item_id}.wav",
                "question": f"What is heard in clip {i}?",
                "choices": ["Man", "Woman", "Child", "Robot"],
                "answer": "Woman",
                "dataset": "AudioSet",
                "task": task,
                "split": "test-mini",
                "category": ["Reasoning"] if i == 0 else "Information Extraction",
                "sub-category": "Acoustic Source Inference",
                "difficulty": "medium",
            }
        )
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(records))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    from tiny_models import build_text_model

    return build_text_model(tmp_path_factory.mktemp("tiny_text"))


@pytest.fixture(scope="session")
def tiny_slm(tmp_path_factory) -> Path:
    from tiny_models import build_qwen2_audio

    return build_qwen2_audio(tmp_path_factory.mktemp("tiny_slm"))


@pytest.fixture(scope="session")
def mcq_task(tmp_path_factory) -> Path:
    """A JSONL task: 4-option questions with spoken versions of mixed lengths, one with broken audio."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("mcq_task")
    (root / "audio").mkdir()
    lines = []
    for i in range(10):
        sf.write(root / "audio" / f"{i}.wav", tone(0.3 + 0.25 * i, rate=16_000, seed=i), 16_000)
        prompt = f"Question {i}: which is a mammal?\nA. shark\nB. whale\nC. trout\nD. squid"
        lines.append({"id": f"q{i}", "prompt": prompt, "audio": f"audio/{i}.wav", "reference": "B", "domain": "zoo"})
    (root / "audio" / "9.wav").write_bytes(b"RIFF broken")
    path = root / "mcq.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# ---------------------------------------------------------------------------------------------- KD pair


KD_WORDS = ["yes", "no", "answer", "question", "audio", "speech", "text", "option"]


def build_pair(tmp_path_factory) -> tuple[str, str]:
    """A tiny teacher (text LLM) and student (Qwen2-Audio) sharing a tokenizer: the KD tests' pair."""
    from tiny_models import build_qwen2_audio, build_text_model

    teacher = build_text_model(tmp_path_factory.mktemp("teacher"), seed=1)
    student = build_qwen2_audio(tmp_path_factory.mktemp("student"), seed=0)
    return str(teacher), str(student)


def write_data(tmp_path_factory) -> Path:
    import soundfile as sf

    folder = tmp_path_factory.mktemp("kd-data")
    lines = []
    for i in range(10):
        sf.write(folder / f"clip{i}.wav", tone(0.3 + 0.05 * i, freq=200.0 + 40 * i, seed=i), 16_000)
        instruction = f"question {KD_WORDS[i % 8]} {KD_WORDS[(i + 3) % 8]} audio"
        response = " ".join(KD_WORDS[(i + j) % 8] for j in range(3 + i % 3))
        lines.append({"id": f"ex{i}", "instruction": instruction, "response": response, "audio": f"clip{i}.wav"})
    path = folder / "kd.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    return build_pair(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory)

"""A least-squares start for the projector: map each spoken word's encoder frames onto the LLM's own
input embedding of that word, before any gradient step.

A randomly initialised projector gives the LLM audio tokens that mean nothing to it; with a small LLM
and a CPU's worth of steps, cross-entropy then mostly teaches the answers' *prior* (the organism answers
with plausible training-like sentences), not the sounds. Transcription examples say which words a clip
holds; a clean synthetic voice says them in order, at a steady rate, between leading and trailing
silence. So each word gets the encoder frames of its share of the speech span (shares proportional to
its letters), and the projector is the ridge-regression solution from frames to the word's embedding
(the mean of its lower-cased tokens' rows, as case is not heard; silence maps to the embedding of a full
stop). The fit is closed-form
(seconds), and the result is rescaled to the embeddings' root-mean-square, because ridge shrinks it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xkd_eval.errors import XkdError

WORD = re.compile(r"[A-Za-z0-9']+")
SILENCE_TEXT = "."


@dataclass(frozen=True)
class ProjectorFit:
    """What the fit used and how well it explains the frames (recorded in ``training.json``)."""

    clips: int
    frames: int
    words: int
    ridge: float
    scale: float  # applied to the ridge solution so its outputs have the embeddings' RMS
    train_word_accuracy: float  # share of words whose middle frame maps nearest to one of the word's tokens

    def record(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


def speech_span(audio: np.ndarray, n_frames: int, threshold: float = 0.1) -> tuple[int, int]:
    """[first, last + 1) of the ``n_frames`` equal slices of ``audio`` whose RMS reaches ``threshold`` of the
    loudest slice's: the spoken part between the voice's leading and trailing silence."""
    if n_frames < 1 or audio.size < n_frames:
        raise XkdError(f"cannot split {audio.size} samples into {n_frames} frames")
    edges = np.linspace(0, audio.size, n_frames + 1).astype(int)
    power = [np.mean(np.square(audio[a:b], dtype=np.float64)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    rms = np.sqrt(np.array(power))
    loud = np.flatnonzero(rms >= threshold * rms.max()) if rms.max() > 0 else np.arange(n_frames)
    return int(loud[0]), int(loud[-1]) + 1


def word_frames(words: Sequence[str], span: tuple[int, int]) -> list[tuple[int, int]]:
    """Each word's [start, end) frames: the span shared in proportion to the word's letters plus one (the
    pause after it); every word gets at least one frame."""
    start, end = span
    weights = np.array([len(w) + 1 for w in words], dtype=np.float64)
    bounds = start + np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * (end - start)
    spans = []
    for k in range(len(words)):
        lo = min(int(round(bounds[k])), end - 1)
        spans.append((lo, max(lo + 1, int(round(bounds[k + 1])))))
    return spans


def fit_projector(
    features: Sequence[torch.Tensor],
    audios: Sequence[np.ndarray],
    transcripts: Sequence[str],
    tokenizer: Any,
    embeddings: torch.Tensor,
    *,
    ridge: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, ProjectorFit]:
    """(weight [d_llm, d_enc], bias [d_llm], fit) of the linear map from encoder frames (``features[i]``:
    [n_i, d_enc], the clips' cached encoder outputs) to the LLM's input ``embeddings`` of the words the
    clips say (``transcripts``)."""
    if not (len(features) == len(audios) == len(transcripts)) or not features:
        raise XkdError("fit_projector needs one audio clip and one transcript per feature tensor, and at least one")
    rows = embeddings.detach().float()

    def embedding_of(text: str) -> tuple[torch.Tensor, set[int]]:
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        return rows[ids].mean(0), set(ids)

    silence, _ = embedding_of(SILENCE_TEXT)
    inputs, targets, centres = [], [], []  # centres: (row of the word's middle frame in the stacked frames, its ids)
    n_words = offset = 0
    for feats, audio, text in zip(features, audios, transcripts, strict=True):
        words = WORD.findall(text.lower())  # a word sounds the same at the start of a sentence
        if not words:
            continue
        target = silence.expand(feats.shape[0], -1).clone()
        for word, (lo, hi) in zip(words, word_frames(words, speech_span(audio, feats.shape[0])), strict=True):
            vector, word_ids = embedding_of(word)
            target[lo:hi] = vector
            centres.append((offset + (lo + hi - 1) // 2, word_ids))
        n_words += len(words)
        offset += feats.shape[0]
        inputs.append(feats.detach().float())
        targets.append(target)
    if not inputs:
        raise XkdError("no transcript has a word: the least-squares projector needs transcription examples")
    x = torch.cat(inputs)
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    y = torch.cat(targets)
    gram = x.T @ x + ridge * torch.eye(x.shape[1])
    solution = torch.linalg.solve(gram.double(), (x.T @ y).double()).float()
    predicted = x @ solution
    scale = float(rows.pow(2).mean().sqrt() / predicted.pow(2).mean().sqrt().clamp_min(1e-12))
    solution = solution * scale
    normalised_rows = torch.nn.functional.normalize(rows, dim=1)
    at = torch.tensor([i for i, _ in centres])
    nearest = (torch.nn.functional.normalize(predicted[at], dim=1) @ normalised_rows.T).argmax(dim=1)
    accuracy = float(np.mean([int(n) in ids for n, (_, ids) in zip(nearest, centres, strict=True)]))
    fit = ProjectorFit(len(inputs), int(x.shape[0]), n_words, float(ridge), scale, accuracy)
    return solution[:-1].T.contiguous(), solution[-1].contiguous(), fit


def init_projector_least_squares(
    model: Any,
    tokenizer: Any,
    features: Sequence[torch.Tensor],
    audios: Sequence[np.ndarray],
    transcripts: Sequence[str],
    *,
    ridge: float = 1.0,
) -> ProjectorFit:
    """Fit the projector (a single linear layer, as Qwen2-Audio's) in place; returns the fit's figures."""
    from xkd_eval.models.encoder import projector, unwrap

    linear = getattr(projector(model), "linear", None)
    if not isinstance(linear, torch.nn.Linear):
        raise XkdError(f"{type(unwrap(model)).__name__}'s projector is not one linear layer: no least-squares start")
    embeddings = unwrap(model).get_input_embeddings().weight
    weight, bias, fit = fit_projector(features, audios, transcripts, tokenizer, embeddings, ridge=ridge)
    if weight.shape != linear.weight.shape:
        raise XkdError(f"least-squares projector {tuple(weight.shape)} vs the model's {tuple(linear.weight.shape)}")
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight.dtype))
        linear.bias.copy_(bias.to(linear.bias.dtype))
    return fit


__all__ = ["ProjectorFit", "fit_projector", "init_projector_least_squares", "speech_span", "word_frames"]

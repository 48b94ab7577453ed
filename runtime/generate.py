"""Token selection (greedy, temperature and top-p sampling with a seed), tokenizers and streamed text for `lia run`.

Sampling: logits z [B, vocab] -> p = softmax(z / T) in float32; top-p keeps, per row, the most probable tokens
whose preceding mass (the mass of strictly more probable tokens, in descending order) is below ``top_p`` (so
the top token is always kept and the kept set is the smallest whose mass reaches ``top_p``), renormalises and
draws one token with a seeded generator on the CPU, so a seed gives the same tokens on every device for the same
logits. T = 0 is greedy (argmax).

Tokenizers: ``tokenizer.json`` through the ``tokenizers`` package, else ``transformers.AutoTokenizer`` (both from
the optional ``[hf]`` extra, local files only); without either, prompts and outputs are token ids.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

import torch

from lia_model.errors import LiaInputError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise LiaInputError(
                "--temperature", f"must be >= 0, got {self.temperature}", "e.g. --temperature 0.7 (0 = greedy)"
            )
        if not 0 < self.top_p <= 1:
            raise LiaInputError("--top-p", f"must be in (0, 1], got {self.top_p}", "e.g. --top-p 0.9")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        return f"sampling, temperature {self.temperature:g}, top-p {self.top_p:g}, seed {self.seed}"


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Rows of ``probs`` restricted to their top-p nucleus and renormalised (same shape)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the strictly more probable tokens
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    kept = torch.zeros_like(probs).scatter(-1, order, torch.where(keep_sorted, sorted_p, torch.zeros_like(sorted_p)))
    return kept / kept.sum(dim=-1, keepdim=True)


class Sampler:
    """``select`` hook of ``Executor.generate``: greedy, or seeded temperature / top-p sampling."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.gen = torch.Generator().manual_seed(sampling.seed)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.float().cpu() / self.sampling.temperature, dim=-1)
        return top_p_filter(p, self.sampling.top_p)

    def __call__(self, step: int, logits: torch.Tensor) -> torch.Tensor:
        if self.sampling.greedy:
            return logits.argmax(dim=-1)
        ids = torch.multinomial(self.probabilities(logits), 1, generator=self.gen)[:, 0]
        return ids.to(logits.device)


# ---------------------------------------------------------------------------- tokenizers


class Codec(ABC):
    """Text <-> token ids (an interface: tokenizers' and transformers' codecs implement it)."""

    name = "token ids"

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...


class _TokenizersCodec(Codec):
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.name = f"tokenizers ({path.name})"

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


class _TransformersCodec(Codec):
    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.name = f"transformers {type(self.tok).__name__}"

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def load_codec(folder: Path) -> tuple[Optional[Codec], str]:
    """The checkpoint's tokenizer, or None with the reason."""
    tj = folder / "tokenizer.json"
    reasons = []
    if tj.exists():
        try:
            return _TokenizersCodec(tj), ""
        except ImportError:
            reasons.append("the tokenizers package is not installed")
        except Exception as err:  # noqa: BLE001 - a broken tokenizer file falls through to the next option
            reasons.append(f"tokenizer.json did not load ({type(err).__name__}: {str(err).splitlines()[0][:80]})")
    has_files = any((folder / n).exists() for n in ("tokenizer_config.json", "vocab.json", "tokenizer.model"))
    if has_files:
        try:
            return _TransformersCodec(folder), ""
        except ImportError:
            reasons.append("transformers is not installed")
        except Exception as err:  # noqa: BLE001
            reasons.append(f"AutoTokenizer failed ({type(err).__name__}: {str(err).splitlines()[0][:80]})")
    if not tj.exists() and not has_files:
        reasons.append(f"no tokenizer files in {folder}")
    return None, "; ".join(reasons)


def parse_ids(text: str, vocab_size: int, where: str) -> list[int]:
    """'1 2 3' or '1,2,3' -> [1, 2, 3], each in [0, vocab_size)."""
    parts = text.replace(",", " ").split()
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise LiaInputError(
            where,
            f"'{text[:40]}' is not a list of token ids",
            "give ids like '1 2 3', or text with a tokenizer (pip install 'lia-modeler[hf]')",
        ) from None
    if not ids:
        raise LiaInputError(where, "the prompt is empty", "give at least one token")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise LiaInputError(
            where,
            f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
            "give ids of this model's tokenizer",
        )
    return ids


# ---------------------------------------------------------------------------- streaming


class Stream:
    """Prints one sequence's new text as tokens arrive (held back while a multi-byte character is incomplete)."""

    def __init__(self, codec: Optional[Codec], out: TextIO = sys.stdout) -> None:
        self.codec = codec
        self.out = out
        self.ids: list[int] = []
        self.shown = ""

    def push(self, token: int) -> None:
        self.ids.append(int(token))
        if self.codec is None:
            self.out.write(("" if len(self.ids) == 1 else " ") + str(int(token)))
        else:
            text = self.codec.decode(self.ids)
            if text.endswith("\ufffd"):
                return
            if text.startswith(self.shown):
                self.out.write(text[len(self.shown) :])
            self.shown = text
        self.out.flush()

    def close(self) -> None:
        if self.codec is not None:
            text = self.codec.decode(self.ids)
            if text.startswith(self.shown) and len(text) > len(self.shown):
                self.out.write(text[len(self.shown) :])
        self.out.write("\n")
        self.out.flush()

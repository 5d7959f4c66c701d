"""The CLIP BPE tokenizer, built from the vocabulary that ships inside open-clip-torch.

No download: open-clip-torch carries OpenAI's ``bpe_simple_vocab_16e6.txt.gz``. From it we write
``vocab.json`` and ``merges.txt`` exactly as CLIP's ``SimpleTokenizer`` builds its vocabulary
(byte-to-unicode table, merges lines ``[1:49152-256-2+1]``, vocab = bytes + bytes with ``</w>`` +
joined merges + ``<|startoftext|>``, ``<|endoftext|>``; 49408 entries), and load them with
``transformers.CLIPTokenizer``. The ids are CLIP's: "a photo of a cat" encodes to
49406, 320, 1125, 539, 320, 2368, 49407.

open_clip is located, not imported (its import pulls in timm and ftfy, which a GPU worker may lack).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
_CHECK_TEXT = "a photo of a cat"
_CHECK_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def bpe_vocab_path() -> Path:
    """Path of the CLIP BPE file inside the installed open-clip-torch package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open-clip-torch is not installed; it carries the CLIP BPE vocabulary: pip install open-clip-torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILENAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the open-clip-torch install; reinstall open-clip-torch")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (token -> id) and BPE merges, built the way CLIP's SimpleTokenizer does."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"built {len(vocab)} CLIP vocabulary entries, expected {CLIP_VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(vocab)}, merges  # type: ignore[return-value]


def write_clip_bpe_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (with the usual ``#version`` header line) into ``folder``."""
    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )


def build_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIPTokenizer over the real CLIP vocabulary.

    SDXL's first tokenizer pads with ``<|endoftext|>``, its second (OpenCLIP bigG) with ``!`` (id 0).
    Built from the in-memory vocabulary; if this transformers version's constructor does not take it
    (or encodes differently), from the written ``vocab.json``/``merges.txt`` files instead. Either way
    the result is checked against CLIP's known ids.
    """
    vocab, merges = clip_vocab_and_merges()
    try:
        tokenizer = CLIPTokenizer(
            vocab=dict(vocab),
            merges=list(merges),  # type: ignore[arg-type]  # transformers: str | list[str]; its BPE takes (a, b) pairs
            pad_token=pad_token,
            model_max_length=CLIP_MAX_LENGTH,
        )
        ok = tokenizer(_CHECK_TEXT).input_ids == _CHECK_IDS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        with tempfile.TemporaryDirectory() as folder:
            write_clip_bpe_files(Path(folder))
            tokenizer = CLIPTokenizer.from_pretrained(
                folder, pad_token=pad_token, model_max_length=CLIP_MAX_LENGTH, local_files_only=True
            )
    ids = tokenizer(_CHECK_TEXT).input_ids
    if ids != _CHECK_IDS:
        raise RuntimeError(f"CLIP tokenizer encodes {_CHECK_TEXT!r} as {ids}, expected {_CHECK_IDS}")
    return tokenizer

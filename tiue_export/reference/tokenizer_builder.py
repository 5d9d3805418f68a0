"""CLIP-style BPE tokenizers made here (no download): trained with ``tokenizers`` on a corpus."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def build_clip_tokenizer(corpus: Iterable[str], out_dir, vocab_size: int = 1024, model_max_length: int = 77):
    """Train a byte-level BPE with CLIP's conventions and save it as a ``CLIPTokenizer``.

    The saved directory has ``tokenizer.json`` (readable by plain ``tokenizers``, hence by the
    torch-free runtime) and ``tokenizer_config.json``, like Stable Diffusion's tokenizer folder.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    tok = CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return tok


def tiny_clip_tokenizer(out_dir, model_max_length: int = 77):
    """The tiny models' CLIP tokenizer (a BPE of :data:`tiue_export.reference.random_models.TINY_CORPUS`, 360 tokens),
    written to ``out_dir`` and loaded.

    It is a fixed file, not trained anew: ``tokenizers``' BPE trainer orders tokens of equal
    frequency differently from run to run, so every built tiny model had its own token ids, and
    whatever depends on the text embeddings (int8 calibration, say) changed between test sessions.
    """
    import shutil

    from transformers import CLIPTokenizer

    from .builtin import ASSETS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ASSETS / "tiny-tokenizer" / "tokenizer.json", out_dir / "tokenizer.json")
    config = {
        "backend": "tokenizers",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return CLIPTokenizer.from_pretrained(str(out_dir))

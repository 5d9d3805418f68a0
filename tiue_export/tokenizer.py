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

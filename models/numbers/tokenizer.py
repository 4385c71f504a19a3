"""A SentencePiece BPE tokenizer trained on the task data, saved as a T5 fast tokenizer.

T5 conventions: <pad> = 0 (also the decoder start), </s> = 1, <unk> = 2; digits are split into single
pieces so every number is read digit by digit. No <extra_id_*> sentinels: the model is not pre-trained
with span corruption. BPE rather than unigram: on this small corpus it learns every number word
as one piece.
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

VOCAB_SIZE = 160


def train_tokenizer(lines: list[str], out_dir: Path, vocab_size: int = VOCAB_SIZE):
    from transformers import T5TokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, split_digits=True, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1, minloglevel=2,
        hard_vocab_limit=False)
    spiece = out_dir / "spiece.model"
    spiece.write_bytes(model.getvalue())
    # add_prefix_space: the fast tokenizer then starts the text with "▁" as SentencePiece does, so the
    # first word is one piece ("▁spell") rather than letters.
    tokenizer = T5TokenizerFast(vocab_file=str(spiece), extra_ids=0, add_prefix_space=True, from_slow=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer

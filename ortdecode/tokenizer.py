"""Text <-> token ids: the export's tokenizer.json with the `tokenizers` library, or ByT5's bytes.

`TextTokenizer` matches transformers' fast T5 tokenizers: tokenizer.json carries the normalizer,
pre-tokenizer and the post-processor that appends EOS; decoding skips special tokens and applies
transformers' `clean_up_tokenization` when tokenizer_config.json asks for it.

`ByteTokenizer` matches transformers' `ByT5Tokenizer`, which has no tokenizer.json: ids are UTF-8
bytes + 3 after <pad> 0, </s> 1, <unk> 2, and the added tokens (<extra_id_N>) come from
tokenizer_config.json. `load_tokenizer` picks one by the folder's tokenizer_config.json.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from .errors import ModelFolderError
from .model_files import file_in_folder, read_json_file

BYTE_TOKENIZER_CLASS = "ByT5Tokenizer"


def clean_up_tokenization(text: str) -> str:
    """transformers' `PreTrainedTokenizerBase.clean_up_tokenization`: drop spaces before punctuation."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def load_tokenizer(folder: str | Path, pad_token_id: int) -> "TextTokenizer | ByteTokenizer":
    """The tokenizer of an export folder: ByT5's byte tokenizer when tokenizer_config.json names
    `ByT5Tokenizer`, else tokenizer.json."""
    config = read_json_file(folder, "tokenizer_config.json")
    if config.get("tokenizer_class") == BYTE_TOKENIZER_CLASS:
        return ByteTokenizer(folder, config, pad_token_id)
    return TextTokenizer(folder, pad_token_id)


def _padded(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 input_ids [batch, longest] and attention_mask (1 for tokens, 0 for padding)."""
    longest = max(len(ids) for ids in sequences)
    input_ids = np.full((len(sequences), longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask


class TextTokenizer:
    def __init__(self, folder: str | Path, pad_token_id: int):
        folder = Path(folder)
        path = file_in_folder(folder, "tokenizer.json", "tokenizer file")
        if not path.is_file():
            raise ModelFolderError(f"{folder}: tokenizer.json is missing (the export copies the model's tokenizer)")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise ModelFolderError(f"{path} is not a readable tokenizer: {exc}".splitlines()[0]) from None
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        config = read_json_file(folder, "tokenizer_config.json")
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.model_max_length = config.get("model_max_length")
        self.pad_token_id = pad_token_id

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded int64 input_ids [batch, longest] and attention_mask (1 for tokens, 0 for padding)."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return _padded([e.ids for e in encodings], self.pad_token_id)

    def encode_one(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=True).ids

    def token(self, token_id: int) -> str:
        """The vocabulary entry of one id, as stored (e.g. '▁four')."""
        return self._tokenizer.id_to_token(int(token_id))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token_ids; skip_special_tokens=False keeps <pad>, </s>, <extra_id_0>... (stop strings
        match them)."""
        text = self._tokenizer.decode([int(t) for t in token_ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def decode_batch(self, sequences: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in sequences]


class ByteTokenizer:
    """transformers' `ByT5Tokenizer` (slow, pure Python) with its defaults and the added tokens an export
    saved in tokenizer_config.json.

    Encoding: the text is split around added tokens (<pad>, </s>, <unk>, <extra_id_N>; leftmost, longest
    first), whitespace beside a token with lstrip/rstrip is dropped, every other piece becomes its UTF-8
    bytes + 3, and </s> is appended unless the ids already end with it. Decoding: byte runs are decoded as
    UTF-8 with errors="ignore" (a cut multi-byte character disappears, as in transformers); added tokens
    that are not specials, and special tokens above the byte range when kept, stand apart joined by spaces."""

    OFFSET = 3  # ids 0, 1, 2 are <pad>, </s>, <unk>; byte b is id b + 3
    BYTES = 256

    def __init__(self, folder: str | Path, config: dict, pad_token_id: int):
        path = Path(folder) / "tokenizer_config.json"
        added = config.get("added_tokens_decoder")
        if not isinstance(added, dict) or not added:
            raise ModelFolderError(f"{path}: a {BYTE_TOKENIZER_CLASS} needs `added_tokens_decoder` (the ids of "
                                   "<pad>, </s>, <unk> and the extra ids); export the model again")
        try:
            self._added = {int(i): dict(token) for i, token in added.items()}
            self._added_ids = {token["content"]: i for i, token in self._added.items()}
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFolderError(f"{path}: malformed `added_tokens_decoder`: {exc}") from None

        def content(token):
            return token.get("content") if isinstance(token, dict) else token

        additional = {content(t) for t in config.get("additional_special_tokens") or ()}
        special = additional | {content(config.get(name)) for name in ("pad_token", "eos_token", "unk_token")}
        self._special_ids = {self._added_ids[t] for t in special if t in self._added_ids}
        # transformers' `_decode` keeps these apart from the byte runs (its "legacy added tokens"): added
        # tokens that are not special, and additional special tokens with ids past the 256 bytes.
        self._standalone = {i for i, t in self._added.items()
                            if i not in self._special_ids or (t["content"] in additional and i >= self.BYTES)}
        contents = sorted(self._added_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")
        self.eos_token_id = self._added_ids.get(content(config.get("eos_token")), 1)
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.model_max_length = config.get("model_max_length")
        self.pad_token_id = pad_token_id

    def _pieces(self, text: str) -> list[str]:
        """transformers' `PreTrainedTokenizer.tokenize` split: added tokens apart, stripped neighbours."""
        pieces = self._split.split(text)
        for i, piece in enumerate(pieces):
            token = self._added.get(self._added_ids.get(piece, -1)) if i % 2 else None
            if token is None:
                continue
            left = pieces[i - 1] if i > 0 else None
            right = pieces[i + 1] if i < len(pieces) - 1 else None
            if token.get("rstrip") and right:
                pieces[i + 1] = right.lstrip()
            if token.get("lstrip") and left:
                pieces[i - 1] = left.rstrip()
            if token.get("single_word") and left and left[-1] != " ":
                pieces[i - 1] += piece
                pieces[i] = ""
            elif token.get("single_word") and right and right[0] != " ":
                pieces[i] += right
                pieces[i + 1] = ""
        return [p for p in pieces if p]

    def encode_one(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._pieces(text):
            if piece in self._added_ids:
                ids.append(self._added_ids[piece])
            else:
                ids.extend(b + self.OFFSET for b in piece.encode("utf-8"))
        return ids if ids and ids[-1] == self.eos_token_id else ids + [self.eos_token_id]

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded int64 input_ids [batch, longest] and attention_mask (1 for tokens, 0 for padding)."""
        return _padded([self.encode_one(text) for text in texts], self.pad_token_id)

    def token(self, token_id: int) -> str:
        """The vocabulary entry of one id: an added token's text, or the byte as a one-character string."""
        token_id = int(token_id)
        if token_id in self._added:
            return self._added[token_id]["content"]
        if not self.OFFSET <= token_id < self.OFFSET + self.BYTES:
            last_byte = self.OFFSET + self.BYTES - 1
            raise ValueError(f"token id {token_id} is neither a byte (ids {self.OFFSET}..{last_byte}) nor an added "
                             f"token of this {BYTE_TOKENIZER_CLASS}")
        return chr(token_id - self.OFFSET)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """transformers' `ByT5Tokenizer.decode(token_ids, skip_special_tokens)` with its other defaults."""
        texts, run = [], b""
        for token_id in (int(t) for t in token_ids):
            if skip_special_tokens and token_id in self._special_ids:
                continue
            token = self.token(token_id)
            if token_id in self._standalone:
                if run.decode("utf-8", errors="ignore"):
                    texts.append(run.decode("utf-8", errors="ignore"))
                run = b""
                texts.append(token)
            else:
                run += token.encode("utf-8") if token_id in self._added else bytes([ord(token)])
        if run:
            texts.append(run.decode("utf-8", errors="ignore"))
        text = " ".join(texts)
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def decode_batch(self, sequences: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in sequences]

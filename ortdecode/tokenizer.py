"""Text <-> token ids with the `tokenizers` library and the export's tokenizer.json.

Encoding and decoding match transformers' fast T5 tokenizer: tokenizer.json carries the normalizer,
pre-tokenizer and the post-processor that appends EOS; decoding skips special tokens and applies
transformers' `clean_up_tokenization` when tokenizer_config.json asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from .errors import ModelFolderError
from .model_files import file_in_folder, read_json_file


def clean_up_tokenization(text: str) -> str:
    """transformers' `PreTrainedTokenizerBase.clean_up_tokenization`: drop spaces before punctuation."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


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
        longest = max(len(e.ids) for e in encodings)
        input_ids = np.full((len(encodings), longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, :len(encoding.ids)] = encoding.ids
            attention_mask[row, :len(encoding.ids)] = 1
        return input_ids, attention_mask

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

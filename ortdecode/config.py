"""Generation options: one frozen dataclass, validated once, with transformers' names and defaults.

Defaults come, as in transformers, from three layers: the class defaults below (transformers'
`GenerationConfig` defaults), then the model's ``generation_config.json``, then the keyword arguments of
the call. The decoding loop trusts a `GenerationConfig`: every check happens in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import OrtDecodeNotice
from .model_files import read_json_file


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationConfig:
    # Length. `max_new_tokens` wins over `max_length`; `max_length` counts the decoder start token,
    # as in transformers, so max_length=20 allows 19 new tokens.
    max_new_tokens: int | None = None
    max_length: int = 20
    min_new_tokens: int | None = None  # when set, wins over min_length (transformers' rule)
    min_length: int = 0  # counts the decoder start token too
    # Search strategy: greedy when do_sample is False and num_beams == 1.
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0  # beam score = sum of log-probs / (generated length ** length_penalty)
    early_stopping: bool | str = False  # True, False or "never", as in transformers
    # Sampling warpers, applied in this order when do_sample is True.
    temperature: float = 1.0
    top_k: int = 50  # 0 disables; transformers' default is 50
    top_p: float = 1.0  # 1.0 disables
    # Logits processors, applied before the warpers.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # Stopping besides EOS and the length limit (transformers' `stop_strings` and `max_time`): a sequence
    # stops once its text contains one of `stop` (the stop string is kept, as in transformers); every
    # sequence stops after `max_time` seconds.
    stop: tuple[str, ...] = ()
    max_time: float | None = None
    # Inputs: at most `max_input_tokens` tokens per input (None: the model's limit, see `Generator`);
    # a longer input is an error, or is cut to the limit with a warning when `truncate_input` is True.
    max_input_tokens: int | None = None
    truncate_input: bool = False
    # Randomness: the seed of the np.random.Generator used for sampling (None: fresh entropy).
    seed: int | None = None
    # What the result carries besides the sequences.
    return_logits: bool = False  # raw logits of every step, like transformers' output_logits
    return_scores: bool = False  # processed scores of every step, like transformers' output_scores
    # Special ids, from the model.
    decoder_start_token_id: int = 0
    eos_token_id: tuple[int, ...] = (1,)
    pad_token_id: int = 0

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, (list, tuple)):
            object.__setattr__(self, "stop", tuple(self.stop))
        eos = (self.eos_token_id,) if _is_int(self.eos_token_id) else self.eos_token_id
        if not (isinstance(eos, (list, tuple)) and all(_is_int(t) for t in eos)):
            raise ValueError(f"`eos_token_id` has to be a token id or a list of them, but is {self.eos_token_id!r}")
        object.__setattr__(self, "eos_token_id", tuple(int(t) for t in eos))
        self._validate()

    def _validate(self) -> None:
        def fail(name, requirement):
            raise ValueError(f"`{name}` has to be {requirement}, but is {getattr(self, name)!r}")

        if self.max_new_tokens is not None and not (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1):
            fail("max_new_tokens", "an integer >= 1")
        if not (_is_int(self.max_length) and self.max_length >= 2):
            fail("max_length", "an integer >= 2 (it counts the decoder start token)")
        if self.min_new_tokens is not None and not (_is_int(self.min_new_tokens) and self.min_new_tokens >= 0):
            fail("min_new_tokens", "a non-negative integer or None")
        for name in ("min_length", "no_repeat_ngram_size"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 0):
                fail(name, "a non-negative integer")
        if not isinstance(self.do_sample, bool):
            fail("do_sample", "True or False")
        if not (_is_int(self.num_beams) and self.num_beams >= 1):
            fail("num_beams", "an integer >= 1")
        if not (_is_int(self.num_return_sequences) and self.num_return_sequences >= 1):
            fail("num_return_sequences", "an integer >= 1")
        if (self.num_beams > 1 or not self.do_sample) and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"`num_return_sequences` ({self.num_return_sequences}) has to be <= `num_beams` "
                f"({self.num_beams}) unless sampling without beams: greedy and beam search return at most "
                "num_beams sequences")
        if not _is_number(self.length_penalty):
            fail("length_penalty", "a number")
        if self.early_stopping not in (True, False, "never"):
            fail("early_stopping", "True, False or 'never'")
        if not _is_number(self.temperature) or (self.do_sample and not self.temperature > 0):
            fail("temperature", "a float > 0 when sampling (for greedy decoding set do_sample=False)")
        if not (_is_int(self.top_k) and self.top_k >= 0):
            fail("top_k", "a non-negative integer (0 disables it)")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            fail("top_p", "a float in (0, 1]")
        if not (_is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            fail("repetition_penalty", "a float > 0")
        if not (isinstance(self.stop, tuple) and all(isinstance(t, str) and t for t in self.stop)):
            fail("stop", "a non-empty string or a list of them")
        if self.max_time is not None and not (_is_number(self.max_time) and self.max_time > 0):
            fail("max_time", "a number of seconds > 0, or None")
        if self.max_input_tokens is not None and not (_is_int(self.max_input_tokens) and self.max_input_tokens >= 1):
            fail("max_input_tokens", "an integer >= 1, or None")
        if not isinstance(self.truncate_input, bool):
            fail("truncate_input", "True or False")
        if self.seed is not None and not _is_int(self.seed):
            fail("seed", "an integer or None")
        for name in ("return_logits", "return_scores"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "True or False")
        for name in ("decoder_start_token_id", "pad_token_id"):
            if not _is_int(getattr(self, name)):
                fail(name, "an integer")
        if not self.eos_token_id or not all(t >= 0 for t in self.eos_token_id):
            fail("eos_token_id", "a token id or a non-empty list of token ids")

    @property
    def new_token_budget(self) -> int:
        """How many tokens a sequence may gain: max_new_tokens, else max_length minus the start token."""
        return self.max_new_tokens if self.max_new_tokens is not None else self.max_length - 1

    @property
    def effective_min_length(self) -> int:
        """The minimum decoder length (start token included) before EOS is allowed."""
        return self.min_length if self.min_new_tokens is None else 1 + self.min_new_tokens

    @property
    def is_beam_search(self) -> bool:
        return self.num_beams > 1

    @property
    def rows_per_input(self) -> int:
        """Decoder rows each input occupies: one per beam, or one per returned sample."""
        return self.num_beams if self.is_beam_search else self.num_return_sequences

    def for_call(self, **options) -> "GenerationConfig":
        """These defaults with one call's options applied, and transformers' length rule: a max_length
        that nobody changed (the class default 20, not passed in this call) means 20 *new* tokens, while
        an explicit max_length counts the decoder start token."""
        config = self.replace(**options)
        if config.max_new_tokens is None and "max_length" not in options and \
                config.max_length == GenerationConfig.max_length:
            config = config.replace(max_new_tokens=config.max_length)
        return config

    def replace(self, **options) -> "GenerationConfig":
        """A copy with `options` changed; an unknown option name is a `ValueError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown generation option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **options)  # __post_init__ validates the result

    @classmethod
    def from_model_folder(cls, folder: str | Path, **special_ids) -> "GenerationConfig":
        """transformers' defaults overridden by the model's generation_config.json (unknown fields ignored,
        unsupported ones reported by an `OrtDecodeNotice` warning)."""
        path = Path(folder) / "generation_config.json"
        data = read_json_file(folder, path.name)
        known = {f.name for f in dataclasses.fields(cls)} - {"seed", "return_logits", "return_scores", "stop",
                                                             "max_input_tokens", "truncate_input"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        if data.get("stop_strings"):  # transformers' name for `stop`
            values["stop"] = data["stop_strings"]
        values.update({k: v for k, v in special_ids.items() if k not in values and v is not None})
        unsupported = sorted(k for k, v in data.items() if k in _UNSUPPORTED_FIELDS and v not in (None, False, [], {}))
        if unsupported:
            warnings.warn(f"{path} sets {', '.join(unsupported)}, which ortdecode does not implement; ignored",
                          OrtDecodeNotice, stacklevel=2)
        return cls(**values)


# transformers generation fields that change results and that ortdecode does not implement.
_UNSUPPORTED_FIELDS = {
    "bad_words_ids", "force_words_ids", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
    "begin_suppress_tokens", "sequence_bias", "encoder_repetition_penalty", "encoder_no_repeat_ngram_size",
    "typical_p", "epsilon_cutoff", "eta_cutoff", "min_p", "diversity_penalty", "num_beam_groups",
    "penalty_alpha", "exponential_decay_length_penalty", "renormalize_logits", "constraints",
    "guidance_scale", "watermarking_config",
}

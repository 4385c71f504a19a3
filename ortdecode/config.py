"""Generation options: one frozen dataclass, validated once, with transformers' names and defaults.

Defaults come, as in transformers, from three layers: the class defaults below (transformers'
`GenerationConfig` defaults), then the model's ``generation_config.json``, then the keyword arguments of
the call. The decoding loop trusts a `GenerationConfig`: every check happens in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import OrtDecodeNotice
from .model_files import read_json_file

# The decoder prompt every sequence starts from: the decoder start token alone.
DECODER_PROMPT_LENGTH = 1


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
    # Sampling warpers, applied in this order when do_sample is True (transformers' defaults disable all
    # but top_k).
    temperature: float = 1.0
    top_k: int = 50  # 0 disables; transformers' default is 50
    top_p: float = 1.0  # 1.0 disables
    min_p: float | None = None  # keep tokens with probability >= min_p * the top probability
    typical_p: float = 1.0  # locally typical sampling's mass; 1.0 disables
    epsilon_cutoff: float = 0.0  # keep tokens with probability >= epsilon; 0.0 disables
    eta_cutoff: float = 0.0  # eta sampling's epsilon; 0.0 disables
    # Logits processors, applied before the warpers (order: `processors.build_processors`).
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    encoder_repetition_penalty: float = 1.0  # > 1 favours the tokens of the input (the encoder's ids)
    encoder_no_repeat_ngram_size: int = 0  # n-grams of the input may not be repeated in the output
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None  # token sequences never generated
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] | None = None  # ((token ids), bias) pairs;
    #                                          also a dict {(ids): bias} or a list [[ids, bias]] as transformers
    suppress_tokens: tuple[int, ...] | None = None  # never generated
    begin_suppress_tokens: tuple[int, ...] | None = None  # never generated first
    forced_bos_token_id: int | None = None  # the first generated token
    forced_eos_token_id: tuple[int, ...] | None = None  # forced as the last token when the budget runs out
    exponential_decay_length_penalty: tuple[int, float] | None = None  # (start_index, decay_factor): EOS
    #                          scores grow by |score| * (decay_factor ** (tokens past start_index) - 1)
    renormalize_logits: bool = False  # log-softmax after every processor and warper
    # Call-only options (transformers' `generate` arguments, never read from generation_config.json).
    # prefix_allowed_tokens_fn(batch_id, input_ids_row) -> allowed token ids; batch_id is the input's index.
    prefix_allowed_tokens_fn: Callable | None = None
    # stopping_criteria: callables (input_ids, scores) -> bool or bool[rows], transformers'
    # `StoppingCriteria` on NumPy arrays; a row they stop ends with finish reason "stop".
    stopping_criteria: tuple[Callable, ...] = ()
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
        for name in ("eos_token_id", "forced_eos_token_id"):
            value = getattr(self, name)
            ids = (value,) if _is_int(value) else value
            if ids is None and name == "forced_eos_token_id":
                continue
            if not (isinstance(ids, (list, tuple)) and ids and all(_is_int(t) and t >= 0 for t in ids)):
                raise ValueError(f"`{name}` has to be a token id or a non-empty list of them, but is {value!r}")
            object.__setattr__(self, name, tuple(int(t) for t in ids))
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            value = getattr(self, name)
            if value is not None:
                if not (isinstance(value, (list, tuple)) and all(_is_int(t) and t >= 0 for t in value)):
                    raise ValueError(f"`{name}` has to be a list of token ids, but is {value!r}")
                object.__setattr__(self, name, tuple(int(t) for t in value))
        if self.bad_words_ids is not None:
            object.__setattr__(self, "bad_words_ids", _bad_words(self.bad_words_ids))
        if self.sequence_bias is not None:
            object.__setattr__(self, "sequence_bias", _sequence_bias(self.sequence_bias))
        if isinstance(self.exponential_decay_length_penalty, list):
            object.__setattr__(self, "exponential_decay_length_penalty", tuple(self.exponential_decay_length_penalty))
        if isinstance(self.stopping_criteria, list) or callable(self.stopping_criteria):
            criteria = [self.stopping_criteria] if callable(self.stopping_criteria) else self.stopping_criteria
            object.__setattr__(self, "stopping_criteria", tuple(criteria))
        self._validate()
        self._warn_sampling_options_without_sampling()

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
        if self.min_p is not None and not (_is_number(self.min_p) and 0 <= self.min_p <= 1):
            fail("min_p", "a float in the [0, 1] interval")
        if not (_is_number(self.typical_p) and 0 < self.typical_p <= 1):
            fail("typical_p", "a float > 0 and <= 1 (1.0 disables it)")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            if not (_is_number(getattr(self, name)) and 0 <= getattr(self, name) < 1):
                fail(name, "a float >= 0 and < 1 (0.0 disables it)")
        for name in ("repetition_penalty", "encoder_repetition_penalty"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
                fail(name, "a float > 0")
        if not (_is_int(self.encoder_no_repeat_ngram_size) and self.encoder_no_repeat_ngram_size >= 0):
            fail("encoder_no_repeat_ngram_size", "a non-negative integer")
        if self.forced_bos_token_id is not None and not (_is_int(self.forced_bos_token_id) and
                                                         self.forced_bos_token_id >= 0):
            fail("forced_bos_token_id", "a token id or None")
        decay = self.exponential_decay_length_penalty
        if decay is not None and not (isinstance(decay, tuple) and len(decay) == 2 and _is_int(decay[0]) and
                                      decay[0] >= 0 and _is_number(decay[1]) and decay[1] > 0):
            fail("exponential_decay_length_penalty", "a pair (start_index: int >= 0, decay_factor: float > 0)")
        if not isinstance(self.renormalize_logits, bool):
            fail("renormalize_logits", "True or False")
        if self.prefix_allowed_tokens_fn is not None and not callable(self.prefix_allowed_tokens_fn):
            fail("prefix_allowed_tokens_fn", "a callable (batch_id, input_ids) -> allowed token ids, or None")
        if not (isinstance(self.stopping_criteria, tuple) and all(callable(c) for c in self.stopping_criteria)):
            fail("stopping_criteria", "a list of callables (input_ids, scores) -> bool or bool[rows]")
        if not (isinstance(self.stop, tuple) and all(isinstance(t, str) and t for t in self.stop)):
            fail("stop", "a non-empty string or a list of them")
        if self.max_time is not None and not (_is_number(self.max_time) and self.max_time > 0):
            fail("max_time", "a number of seconds > 0, or None")
        if self.max_input_tokens is not None and not (_is_int(self.max_input_tokens) and self.max_input_tokens >= 1):
            fail("max_input_tokens", "an integer >= 1, or None")
        if not isinstance(self.truncate_input, bool):
            fail("truncate_input", "True or False")
        if self.seed is not None and not (_is_int(self.seed) and self.seed >= 0):
            fail("seed", "an integer >= 0 or None")
        for name in ("return_logits", "return_scores"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "True or False")
        for name in ("decoder_start_token_id", "pad_token_id"):
            if not _is_int(getattr(self, name)):
                fail(name, "an integer")

    def _warn_sampling_options_without_sampling(self) -> None:
        """transformers' `GenerationConfig.validate` warning: sampling-only options set while do_sample is
        False have no effect (a warning, not an error; Python shows each distinct message once)."""
        if self.do_sample:
            return
        unused = {"temperature": self.temperature != 1.0, "top_p": self.top_p != 1.0, "min_p": self.min_p is not None,
                  "typical_p": self.typical_p != 1.0, "top_k": self.top_k != 50, "epsilon_cutoff": self.epsilon_cutoff != 0.0,
                  "eta_cutoff": self.eta_cutoff != 0.0}
        for name in (name for name, is_set in unused.items() if is_set):
            warnings.warn(f"`do_sample` is set to `False`. However, `{name}` is set to `{getattr(self, name)}` -- this "
                          "flag is only used in sample-based generation modes. You should set `do_sample=True` or unset "
                          f"`{name}`.", UserWarning, stacklevel=2)

    def check_token_ids(self, vocab_size: int) -> None:
        """Every token id an option names has to lie in [0, vocab_size): checked once the model is known."""
        # decoder_start_token_id and pad_token_id are fed to the decoder: out of range fails inside the graph.
        named = {"decoder_start_token_id": (self.decoder_start_token_id,), "pad_token_id": (self.pad_token_id,),
                 "eos_token_id": self.eos_token_id, "forced_eos_token_id": self.forced_eos_token_id or (),
                 "forced_bos_token_id": () if self.forced_bos_token_id is None else (self.forced_bos_token_id,),
                 "suppress_tokens": self.suppress_tokens or (), "begin_suppress_tokens": self.begin_suppress_tokens or (),
                 "bad_words_ids": [t for ids in self.bad_words_ids or () for t in ids],
                 "sequence_bias": [t for ids, _ in self.sequence_bias or () for t in ids]}
        for name, ids in named.items():
            outside = sorted({t for t in ids if not 0 <= t < vocab_size})
            if outside:
                raise ValueError(f"`{name}` has to hold token ids in [0, {vocab_size}), but holds {outside}")

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
                                                             "max_input_tokens", "truncate_input",
                                                             "prefix_allowed_tokens_fn", "stopping_criteria"}
        values = {k: v for k, v in data.items() if k in known and v not in (None, [], {})}  # empty: unset
        if data.get("stop_strings"):  # transformers' name for `stop`
            values["stop"] = data["stop_strings"]
        values.update({k: v for k, v in special_ids.items() if k not in values and v is not None})
        unsupported = sorted(k for k, v in data.items() if k in _UNSUPPORTED_FIELDS and v not in (None, False, [], {}))
        if unsupported:
            warnings.warn(f"{path} sets {', '.join(unsupported)}, which ortdecode does not implement; ignored",
                          OrtDecodeNotice, stacklevel=2)
        return cls(**values)


def _bad_words(value) -> tuple[tuple[int, ...], ...]:
    """transformers' `bad_words_ids` check: a non-empty list of non-empty lists of token ids."""
    if not (isinstance(value, (list, tuple)) and value and
            all(isinstance(ids, (list, tuple)) and ids and all(_is_int(t) and t >= 0 for t in ids) for ids in value)):
        raise ValueError(f"`bad_words_ids` has to be a non-empty list of non-empty lists of token ids, but is {value!r}")
    return tuple(tuple(int(t) for t in ids) for ids in value)


def _sequence_bias(value) -> tuple[tuple[tuple[int, ...], float], ...]:
    """transformers' `sequence_bias` forms, a dict {(token ids): bias} or a list [[token ids, bias], ...], as
    ((token ids), bias) pairs. Biases are numbers; -inf bans a sequence, NaN and +inf are refused."""
    pairs = list(value.items()) if isinstance(value, dict) else value
    valid = isinstance(pairs, (list, tuple)) and len(pairs) > 0 and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], (list, tuple)) and pair[0] and
        all(_is_int(t) and t >= 0 for t in pair[0]) and _is_number(pair[1]) and not math.isnan(pair[1]) and
        pair[1] != math.inf for pair in pairs)
    if not valid:
        raise ValueError("`sequence_bias` has to be a non-empty dict {(token ids): bias} or list [[token ids, bias], "
                         f"...] with finite or -inf biases, but is {value!r}")
    return tuple((tuple(int(t) for t in ids), float(bias)) for ids, bias in pairs)


# transformers generation fields that change results and that ortdecode does not implement.
_UNSUPPORTED_FIELDS = {
    "force_words_ids", "diversity_penalty", "num_beam_groups", "penalty_alpha", "constraints", "guidance_scale",
    "watermarking_config", "remove_invalid_values",
}

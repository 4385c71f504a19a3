"""The semantic changes the mutation script applies, one at a time.

LISTED: the changes a review made by hand (issue 14), each a (file, original text, changed text) edit of
the source; every one must be caught. The script adds operator mutants generated from the same modules
(`generated_mutants` in run.py)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under ortdecode/
    original: str  # exact text, must occur once
    changed: str
    why: str = ""


LISTED = [
    Mutant("early_stopping=True ignored", "search.py",
           "open_beam = not (self.is_finished.all() and cfg.early_stopping is True)", "open_beam = True",
           "beam search never stops early when every beam has finished"),
    Mutant("early_stopping='never' heuristic dropped", "search.py",
           'if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:', "if False:",
           "'never' judges the best running beam at its current length"),
    Mutant("stop-string look-back cut to one token", "stopping.py",
           'self.window = 4 * max((len(s.encode("utf-8")) for s in self.stop_strings), default=0) + 4',
           "self.window = 1"),
    Mutant("KV cache copied through host NumPy every step", "runner.py",
           "state.self_cache = outputs[1:1 + count]",
           "state.self_cache = [self._to_device(v.numpy()) for v in outputs[1:1 + count]]"),
    Mutant("beam reorder done on the host", "runner.py",
           "        state.self_cache = self._gather_rows(state.self_cache, rows)\n\n",
           "        state.self_cache = [self._to_device(v.numpy()[rows]) for v in state.self_cache]\n\n"),
    Mutant("score: labels shifted the wrong way", "generator.py",
           "decoder_input_ids[row, 1:len(ids)] = ids[:-1]", "decoder_input_ids[row, 1:len(ids)] = ids[1:]"),
    Mutant("search object shared across calls, read once at loop start", "generator.py",
           "        search = self._search(config, len(input_ids))\n        try:\n            for _ in self._decode(search,",
           "        self._shared = search = self._search(config, len(input_ids))\n        try:\n"
           "            for _ in self._decode(self._shared,",
           "a call that starts between another call's assignment and its read decodes the other's search"),
    Mutant("temperature 3% off", "processors.py",
           "self.temperature = float(temperature)", "self.temperature = float(temperature) * 1.03"),
    Mutant("temperature applied after top-k/top-p", "processors.py",
           """        if config.temperature != 1.0:
            processors.append(Temperature(config.temperature))
        if config.top_k != 0:
            processors.append(TopK(config.top_k, min_tokens_to_keep))
        if config.top_p < 1.0:
            processors.append(TopP(config.top_p, min_tokens_to_keep))""",
           """        if config.top_k != 0:
            processors.append(TopK(config.top_k, min_tokens_to_keep))
        if config.top_p < 1.0:
            processors.append(TopP(config.top_p, min_tokens_to_keep))
        if config.temperature != 1.0:
            processors.append(Temperature(config.temperature))"""),
    Mutant("top-k keeps k + 1 tokens", "processors.py",
           "k = min(self.top_k, scores.shape[-1])", "k = min(self.top_k + 1, scores.shape[-1])"),
]

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
           "state.self_cache = room_values or outputs[1:1 + count]",
           "state.self_cache = [self._to_device(v.numpy()) for v in (room_values or outputs[1:1 + count])]"),
    Mutant("beam reorder done on the host", "runner.py",
           "        if state.self_store is None:\n            state.self_cache = self._gather_rows(state.self_cache, rows)\n",
           "        if state.self_store is None:\n"
           "            state.self_cache = [self._to_device(v.numpy()[rows]) for v in state.self_cache]\n"),
    Mutant("score: labels shifted the wrong way", "generator.py",
           "decoder_input_ids[row, 1:len(ids)] = ids[:-1]", "decoder_input_ids[row, 1:len(ids)] = ids[1:]"),
    Mutant("one engine shared across calls", "generator.py",
           "config.new_token_budget, max_waiting=1, continuous=False)\n",
           "config.new_token_budget, max_waiting=1, continuous=False)\n"
           "        engine = self.__dict__.setdefault('_engine', engine)\n",
           "(the decoding loop is the batch engine since the serving change; this is the old 'search object "
           "shared across calls' mutant ported to it) calls would share one engine's state"),
    Mutant("temperature 3% off", "processors.py",
           "self.temperature = float(temperature)", "self.temperature = float(temperature) * 1.03"),
    Mutant("temperature applied after top-k/top-p", "processors.py",
           """        if cfg.temperature != 1.0:
            processors.append(Temperature(cfg.temperature))
        if cfg.top_k != 0:
            processors.append(TopK(cfg.top_k, min_tokens_to_keep))
        if cfg.top_p < 1.0:
            processors.append(TopP(cfg.top_p, min_tokens_to_keep))""",
           """        if cfg.top_k != 0:
            processors.append(TopK(cfg.top_k, min_tokens_to_keep))
        if cfg.top_p < 1.0:
            processors.append(TopP(cfg.top_p, min_tokens_to_keep))
        if cfg.temperature != 1.0:
            processors.append(Temperature(cfg.temperature))"""),
    Mutant("top-k keeps k + 1 tokens", "processors.py",
           "k = min(self.top_k, scores.shape[-1])", "k = min(self.top_k + 1, scores.shape[-1])"),
    Mutant("join: a newcomer's left padding is not masked", "runner.py",
           "decoder_mask, encoder_mask = np.zeros((total, past), np.int64), np.zeros((total, source_length), np.int64)",
           "decoder_mask, encoder_mask = np.ones((total, past), np.int64), np.zeros((total, source_length), np.int64)",
           "continuous batching: a request that joins a running batch attends to zero keys"),
    Mutant("join in place: a newcomer's left padding is not masked", "runner.py",
           "new_decoder_mask = np.pad(new.decoder_mask[rows], ((0, 0), (past - new.past, 0)))",
           "new_decoder_mask = np.pad(new.decoder_mask[rows], ((0, 0), (past - new.past, 0)), constant_values=1)",
           "continuous batching on CPU: a newcomer written into the batch's room attends to zero keys"),
    Mutant("join in place: newcomers written over the batch's last rows", "runner.py",
           "room[n:n + k, :, past - new.past:past] = value.numpy()[rows, :, :new.past]",
           "room[n - 1:n - 1 + k, :, past - new.past:past] = value.numpy()[rows, :, :new.past]"),
    Mutant("engine: newcomers' first tokens wait for the running rows' step", "engine.py",
           "if publish is not None and updates and keep:", "if False:",
           "a served newcomer's first token would wait for the whole batch's step (time to first token)"),
    Mutant("top-k: the floor from the (k-1)-th group maximum", "numerics.py",
           "floor = np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]",
           "floor = np.partition(maxima, maxima.shape[1] - k + 1, axis=1)[:, maxima.shape[1] - k + 1]",
           "beam search and top-k would miss candidates that lie in groups below the (k-1)-th maximum"),
    Mutant("top-p: the mass of the bins above the cut left out", "numerics.py",
           "        before = cdf[row, b - 1] if b else 0.0\n", "        before = 0.0\n",
           "the nucleus would take more tokens than top_p's mass whenever the cut falls below the best bin"),
    Mutant("top-p: the token after the crossing kept as the floor", "numerics.py",
           "        floors[row] = values[order[np.argmax(reached) if reached.any() else len(order) - 1]]\n",
           "        floors[row] = values[order[min(np.argmax(reached) + 1, len(order) - 1) if reached.any() "
           "else len(order) - 1]]\n",
           "one token more than the nucleus"),
    Mutant("top-k: ties broken by the larger column", "numerics.py",
           "order = np.lexsort((columns, -values[rows, columns], rows))",
           "order = np.lexsort((-columns, -values[rows, columns], rows))",
           "equal scores would not be taken in index order (torch.topk / a stable sort)"),
    Mutant("verified files: a file trusted by its name and sha256 alone", "verified.py",
           'if isinstance(entry, dict) and entry.get("sha256") == sha256 and entry.get("stat") == file_signature(path):',
           'if isinstance(entry, dict) and entry.get("sha256") == sha256:',
           "a graph changed after it was verified would load unchecked"),
    Mutant("runner: threads keep spinning after a run", "runner.py",
           'options.add_session_config_entry("session.force_spinning_stop", "1")',
           'options.add_session_config_entry("session.force_spinning_stop", "0")',
           "the measured thread policy (benchmarks/README.md) silently reverted"),
    Mutant("encoder groups cut to their shortest input", "runner.py",
           "return [(np.sort(order[start:end]), int(padded[end - 1])) for start, end in zip(bounds, bounds[1:])]",
           "return [(np.sort(order[start:end]), int(padded[start])) for start, end in zip(bounds, bounds[1:])]",
           "inputs encoded in length groups would lose their last tokens"),
    Mutant("engine: a request's kept rows (beam reorder) ignored in the batch", "engine.py",
           "                keep[id(request)] = kept\n", "                keep[id(request)] = np.arange(request.rows)\n",
           "beam search in the batch engine would continue from the wrong cache rows"),
    Mutant("auto picks the split pair before the with-past layout", "runner.py",
           "        return available[0]\n", "        return available[-1]\n",
           "an export holding every layout would load the decoder weights twice"),
    Mutant("the self cache written into the buffer its past is read from", "runner.py",
           "index = 0 if state.self_buffer != 0 else 1", "index = state.self_buffer or 0",
           "a step would overwrite the past it reads (the self cache alternates between two buffers)"),
    Mutant("grouped encoder: the cross cache padded along the heads axis", "runner.py",
           "length_axis = 2 if self.encoder_gives_cross_cache else 1", "length_axis = 1",
           "inputs encoded in length groups would get a cross cache of the wrong shape"),
    Mutant("in-place cache: a larger store starts without the cached columns", "runner.py",
           "                target[:rows, :, :past] = value.numpy()[:, :, :past]\n",
           "                pass\n",
           "a cache updated in place would forget every step before the store grew"),
    Mutant("in-place cache: the step's present not bound to its past buffer", "runner.py",
           "                for name, value in zip(self._present_self, in_place):\n"
           "                    binding.bind_ortvalue_output(name, value)\n",
           "                for name in self._present_self:\n"
           "                    binding.bind_output(name, self.device_type, self.device_id)\n",
           "the step's key and value would land in a tensor nobody reads"),
    Mutant("in-place cache: the logits output kept bound with the cache", "runner.py",
           "                self._bind_past(binding, state, in_place)\n        binding.bind_output(n.logits, \"cpu\")\n",
           "                self._bind_past(binding, state, in_place)\n        if not bound:\n"
           "            binding.bind_output(n.logits, \"cpu\")\n",
           "a step would write its logits over the last step's, which a caller may still hold (return_logits)"),
    Mutant("in-place cache: rows whose parent is another row keep their own cache", "runner.py",
           "    moved = np.flatnonzero(rows != np.arange(len(rows)))",
           "    moved = np.flatnonzero(rows > np.arange(len(rows)))",
           "a beam continuing a beam of an earlier row would keep its own stale cache"),
    Mutant("in-place cache: a store planned for a long generation in NumPy's huge pages", "runner.py",
           "        if length <= _DENSE_STORE_COLUMNS:", "        if True:",
           "max_new_tokens=100000 would make a 64 MiB store resident, and zero it, at the first step"),
    Mutant("embedding mappings left to read-ahead", "sessions.py",
           "        if madvise(start, end - start, _MADV_RANDOM) != 0:\n",
           "        if True:\n",
           "one generation would map most of the embedding (memory), not the rows it reads"),
    Mutant("packed encoder costed as an unpacked one", "runner.py",
           "costs = _PACKED_ENCODER_COSTS if self.manifest.encoder_packs_tokens else",
           "costs = {} if self.manifest.encoder_packs_tokens else",
           "an encoder that skips the padding already is split for little padding, its outputs copied together"),
    Mutant("a graph a newer onnxruntime optimized fails without saying so", "runner.py",
           "        if not made_by or not _older(ort.__version__, made_by):\n            return \"\"\n",
           "        if True:\n            return \"\"\n",
           "the user sees an unknown operator, not the onnxruntime version the export needs"),
    Mutant("trim in place: the kept rows' oldest columns kept instead of their last", "runner.py",
           "store[:count, :, :past] = store[rows, :, shift:state.past]", "store[:count, :, :past] = store[rows, :, :past]",
           "after the longest request left a continuous batch, the others would attend to padding and lose their "
           "newest keys"),
    Mutant("rows leaving: the cross room's rows not moved", "runner.py",
           "                _move_rows(state.cross_room, rows, state.host_encoder_mask.shape[1], self._copy_threads.map)",
           "                pass",
           "a request behind one that finished would read the finished request's encoder output"),
]

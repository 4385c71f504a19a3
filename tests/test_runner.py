"""The runner: IO binding, cache layout, split vs merged graphs, beam reordering, providers."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ortdecode
from ortdecode.errors import ModelFolderError, ProviderError

from . import ort_spy
from .conftest import TEXTS


@pytest.fixture(scope="module")
def generator(tiny_v1):
    return ortdecode.load(tiny_v1.export, provider="cpu")


def encode(generator, texts=TEXTS[:4]):
    return generator.tokenizer.encode(texts)


def test_cache_lives_in_ortvalues_with_the_manifest_shapes(generator):
    ids, mask = encode(generator)
    state = generator.runner.encode(ids, mask)
    generator.runner.step(state, np.zeros(len(ids), np.int64))
    generator.runner.step(state, np.full(len(ids), 5, np.int64))
    m = generator.manifest
    assert len(state.self_cache) == len(state.cross_cache) == 2 * m.num_decoder_layers
    assert all(isinstance(v, ort.OrtValue) for v in state.self_cache + state.cross_cache)
    rows, heads, columns, d_kv = state.self_cache[0].shape()
    assert [rows, heads, d_kv] == [len(ids), m.num_heads, m.d_kv] and state.past == 2
    # exactly the cached columns, or (a graph updating its cache in place) a buffer with room for more
    assert columns == 2 or (generator.runner.self_cache_in_place and columns > 2)
    assert state.cross_cache[0].shape() == [len(ids), m.num_heads, ids.shape[1], m.d_kv]


def test_a_profiled_load_writes_one_profile_per_session(with_past_export, tmp_path):
    """ONNX Runtime names a profile by the millisecond its session started: sessions built side by side
    (a CPU load) wrote one file between them."""
    import json

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "ort")
    generator = ortdecode.load(with_past_export, provider="cpu", session_options=options)
    generator.generate(TEXTS[:2], max_new_tokens=3)
    files = [session.end_profiling() for session in generator.runner.sessions]
    assert len(set(files)) == len(files) == 3  # encoder, with-past decoder, cache reorder
    runs = [sum(event.get("name") == "model_run" for event in json.loads(Path(file).read_text())) for file in files]
    assert runs[:2] == [1, 3]  # one encoder run, three decoder steps (the reorder never ran: greedy)


def test_split_and_merged_layouts_give_the_same_logits(tiny_v1):
    split = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout="split")
    merged = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout="merged")
    assert not split.runner.uses_merged and merged.runner.uses_merged
    ids, mask = encode(split)
    states = [g.runner.encode(ids, mask) for g in (split, merged)]
    for token in (0, 7, 9, 3):
        a, b = (g.runner.step(s, np.full(len(ids), token, np.int64)) for g, s in zip((split, merged), states))
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("layout", ["split", "with-past"])
def test_select_gathers_rows_in_the_reorder_session(tiny_v1, layout):
    """The reorder graph gathers the cross cache (rows moved between inputs), and the self cache unless it is
    updated in place: then only the rows that change are copied, within its store."""
    generator = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout=layout)
    ids, mask = encode(generator)
    state = generator.runner.encode(ids, mask)
    generator.runner.step(state, np.zeros(4, np.int64))
    before = [v.numpy()[:, :, :state.past].copy() for v in state.self_cache] + [v.numpy().copy() for v in state.cross_cache]
    rows = np.array([2, 2, 0, 3])
    runs = []
    real_run = generator.runner.cache_reorder.run_with_iobinding
    generator.runner.cache_reorder.run_with_iobinding = lambda binding: runs.append(1) or real_run(binding)
    try:
        generator.runner.select(state, rows)
    finally:
        del generator.runner.cache_reorder.run_with_iobinding
    assert len(runs) == (1 if generator.runner.self_cache_in_place else 2)
    after = [v.numpy()[:, :, :state.past] for v in state.self_cache] + [v.numpy() for v in state.cross_cache]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(new, old[rows])
    np.testing.assert_array_equal(state.sources, rows)


def test_reordered_cache_continues_like_a_fresh_decode(generator):
    """Step 2 on reordered rows equals step 2 of a decode that started from those rows."""
    ids, mask = encode(generator)
    rows = np.array([1, 1, 3, 0])
    state = generator.runner.encode(ids, mask)
    generator.runner.step(state, np.zeros(4, np.int64))
    generator.runner.select(state, rows)
    fresh = generator.runner.encode(ids[rows], mask[rows])
    generator.runner.step(fresh, np.zeros(4, np.int64))
    np.testing.assert_allclose(generator.runner.step(state, np.full(4, 6, np.int64)),
                               generator.runner.step(fresh, np.full(4, 6, np.int64)), atol=1e-5)


def test_unknown_provider_and_layout_are_rejected(tiny_v1):
    with pytest.raises(ValueError, match="`provider`.*'tpu'"):
        ortdecode.load(tiny_v1.export, provider="tpu")
    with pytest.raises(ValueError, match="`decoder_layout`.*'fused'"):
        ortdecode.load(tiny_v1.export, decoder_layout="fused")
    with pytest.raises(ValueError, match="`threads`.*0"):
        ortdecode.load(tiny_v1.export, threads=0)


def test_one_thread_decodes_like_the_default(tiny_v1, generator):
    one_thread = ortdecode.load(tiny_v1.export, provider="cpu", threads=1)
    assert one_thread.runner.options.intra_op_num_threads == 1
    assert one_thread.generate(TEXTS[:3], max_new_tokens=6).texts == generator.generate(TEXTS[:3], max_new_tokens=6).texts


def test_every_graph_spins_only_while_it_runs_unless_the_caller_sets_the_options(tiny_v1):
    """Threads that spin after a run take the cores the next graph needs (benchmarks/README.md): ortdecode's
    sessions stop spinning when a run ends; a caller's session options are used as they are."""
    runner = ortdecode.load(tiny_v1.export, provider="cpu", threads=2).runner
    sessions = [runner.encoder, runner.decoder_first, runner.decoder_with_past, runner.decoder_merged,
                runner.cache_reorder]
    for session in [s for s in sessions if s is not None]:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        assert options.intra_op_num_threads == 2
    own = ort.SessionOptions()
    runner = ortdecode.load(tiny_v1.export, provider="cpu", session_options=own).runner
    with pytest.raises(Exception, match="force_spinning_stop"):  # no such entry
        runner.encoder.get_session_options().get_session_config_entry("session.force_spinning_stop")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_cuda_provider_without_cuda_is_a_clear_error(tiny_v1):
    with pytest.raises(ProviderError, match="provider 'cuda' requested.*ortdecode\\[gpu\\]"):
        ortdecode.load(tiny_v1.export, provider="cuda")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_auto_provider_falls_back_to_cpu(tiny_v1):
    assert ortdecode.load(tiny_v1.export, provider="auto").provider == "cpu"


def test_layout_missing_from_the_export_is_a_clear_error(tmp_path, tiny_v1):
    import shutil, json
    copy = tmp_path / "split-only"
    shutil.copytree(tiny_v1.export, copy)
    manifest = json.loads((copy / "ortdecode.json").read_text())
    del manifest["graphs"]["decoder_merged"]
    (copy / "ortdecode.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="decoder_layout='merged'.*no decoder_merged"):
        ortdecode.load(copy, decoder_layout="merged")


@pytest.mark.parametrize("layout", ["split", "merged", "with-past"])
def test_one_first_step_widened_by_select_decodes_like_repeated_inputs(tiny_v1, layout):
    generator = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout=layout)
    ids, mask = encode(generator, TEXTS[:3])
    shared = generator.runner.encode(ids, mask)
    repeated = generator.runner.encode(np.repeat(ids, 4, axis=0), np.repeat(mask, 4, axis=0))
    assert (shared.encoder_hidden or shared.cross_cache[0]).shape()[0] == 3  # the encoder runs once per input
    first = generator.runner.step(shared, np.zeros(3, np.int64))
    generator.runner.select(shared, np.repeat(np.arange(3), 4))
    assert shared.rows == repeated.rows == 12
    np.testing.assert_allclose(np.repeat(first, 4, axis=0), generator.runner.step(repeated, np.zeros(12, np.int64)),
                               atol=1e-5)
    tokens = np.arange(12) % 7  # rows of one input diverge after the first step
    for step in range(2):
        a, b = generator.runner.step(shared, tokens), generator.runner.step(repeated, tokens)
        np.testing.assert_allclose(a, b, atol=1e-5)
        tokens = tokens + 1
    assert shared.self_cache[0].shape() == repeated.self_cache[0].shape()


def decode_alone(runner, ids, mask, tokens):
    state = runner.encode(ids, mask)
    return [runner.step(state, np.array([t])).copy() for t in tokens]


@pytest.mark.parametrize("layout", ["split", "merged", "with-past"])
def test_rows_joined_at_different_steps_decode_as_alone(tiny_v1, layout):
    """Row r joins the running batch at step r (self cache left-padded) and leaves after its last token."""
    from ortdecode_export.validate import joined_batch_max_abs_diff

    generator = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout=layout)
    ids, mask = encode(generator, TEXTS[:5])
    decoder_input_ids = np.random.default_rng(0).integers(2, 150, size=(5, 7))
    decoder_input_ids[:, 0] = 0
    assert joined_batch_max_abs_diff(generator.runner, ids, mask, decoder_input_ids) <= 1e-5


def test_join_left_pads_and_select_trims_the_padding(generator):
    runner = generator.runner
    (ids_a, mask_a), (ids_b, mask_b) = encode(generator, TEXTS[1:2]), encode(generator, TEXTS[0:1])
    long = runner.encode(ids_a, mask_a)
    tokens = [0, 5, 9, 7, 3]
    for t in tokens[:3]:
        runner.step(long, np.array([t]))
    short = runner.encode(ids_b, mask_b)
    runner.step(short, np.array([0]))
    batch = runner.join([(long, np.array([0])), (short, np.array([0]))])
    np.testing.assert_array_equal(batch.decoder_mask, [[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(batch.host_encoder_mask[1], np.r_[mask_b[0], np.zeros(ids_a.shape[1] - ids_b.shape[1])])
    assert batch.cross_cache[0].shape()[2] == ids_a.shape[1]
    runner.step(batch, np.array([7, 5]))
    runner.select(batch, np.array([1]))  # the long row leaves: its padding columns go too
    assert batch.past == 2 and batch.host_encoder_mask.shape[1] == ids_b.shape[1]
    assert batch.cross_cache[0].shape()[2] == ids_b.shape[1]
    expected = decode_alone(runner, ids_b, mask_b, [0, 5, 9])[-1]
    np.testing.assert_allclose(runner.step(batch, np.array([9])), expected, atol=1e-5)


def test_a_batch_with_room_trims_within_its_own_memory_and_decodes_as_alone(tiny_v1):
    """With rows of room (the batch engine's), the trim moves the kept columns within the store and the cross
    room instead of rebuilding them: the same arrays, and each kept row's next logits as alone. Rows left
    behind in the middle of the batch move within the room too."""
    generator = ortdecode.load(tiny_v1.export, provider="cpu")
    runner = generator.runner
    runner.row_capacity = 4
    texts = [TEXTS[1], TEXTS[0], TEXTS[2]]
    (ids_a, mask_a), (ids_b, mask_b), (ids_c, mask_c) = (encode(generator, [t]) for t in texts)
    long = runner.encode(ids_a, mask_a)
    tokens = [0, 5, 9, 7, 3]
    for t in tokens[:3]:
        runner.step(long, np.array([t]))
    short, other = runner.encode(ids_b, mask_b), runner.encode(ids_c, mask_c)
    runner.step(short, np.array([0]))
    runner.step(other, np.array([0]))
    batch = runner.join([(long, np.array([0])), (short, np.array([0])), (other, np.array([0]))])
    assert batch.self_store is not None and batch.cross_room is not None and batch.past == 3
    runner.step(batch, np.array([7, 5, 5]))
    store, room = batch.self_store[0], batch.cross_room[0]
    runner.select(batch, np.array([1, 2]))  # the long row leaves: its padding columns go, and its longer source
    assert batch.past == 2 and batch.host_encoder_mask.shape[1] == max(ids_b.shape[1], ids_c.shape[1])
    assert batch.self_store[0] is store and np.shares_memory(batch.cross_room[0], room)
    assert batch.cross_cache[0].shape()[2] == batch.host_encoder_mask.shape[1]
    logits = runner.step(batch, np.array([9, 9]))
    np.testing.assert_allclose(logits[0], decode_alone(runner, ids_b, mask_b, [0, 5, 9])[-1][0], atol=1e-5)
    np.testing.assert_allclose(logits[1], decode_alone(runner, ids_c, mask_c, [0, 5, 9])[-1][0], atol=1e-5)
    runner.select(batch, np.array([1]))  # the first row leaves: the second moves up within the room
    assert batch.self_store[0] is store and np.shares_memory(batch.cross_room[0], room)
    np.testing.assert_allclose(runner.step(batch, np.array([4]))[0],
                               decode_alone(runner, ids_c, mask_c, [0, 5, 9, 4])[-1][0], atol=1e-5)


def test_auto_loads_the_with_past_layout_with_one_decoder_graph(tiny_v1):
    generator = ortdecode.load(tiny_v1.export, provider="cpu")  # the export holds every layout
    runner = generator.runner
    assert runner.layout == "with-past" and runner.decoder_first is None and runner.decoder_merged is None
    assert len(runner.sessions) == 3  # encoder (with the cross cache), with-past decoder, cache reorder
    state = runner.encode(*encode(generator))
    assert state.encoder_hidden is None and len(state.cross_cache) == 2 * generator.manifest.num_decoder_layers


# ---------------------------------------------------------------- device residency (CPU)
@pytest.mark.parametrize("layout", ["with-past", "split", "merged"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_kv_cache_goes_from_step_to_step_without_copies(tiny_v1, monkeypatch, layout, num_beams):
    """The present KV of one step is the buffer bound as past at the next (same address); beam search
    reorders it in the cache-reorder graph; nothing copies a cache tensor to the host (`numpy()` is only
    called on the logits)."""
    generator = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout=layout)
    spy = ort_spy.install(monkeypatch)
    steps = 6
    generator.generate(TEXTS[:4], max_new_tokens=steps, min_new_tokens=steps, num_beams=num_beams)
    m = generator.manifest
    if generator.runner.self_cache_in_place and num_beams > 1:
        # One store per cache tensor, read as past and written as present by every step; the beams' reorders
        # move rows within it (no graph run, no copy of an OrtValue to the host); a second store only when the
        # first step's rows are widened to the beams. The reorder graph gathers the cross cache for that.
        key, past_key = m.layers[0].present_self_key, m.layers[0].past_self_key
        decoder_runs = [run for run in spy.runs if key in run.outputs]
        assert len(decoder_runs) == steps and all(run.inputs[past_key] == run.outputs[key] for run in decoder_runs)
        assert len({run.outputs[key] for run in decoder_runs}) == 2
        assert spy.graphs().count(m.graphs["cache_reorder"].file) == 1
        assert all(len(shape) == 3 and shape[1:] == (1, m.vocab_size) for shape in spy.host_copies), spy.host_copies
        return
    counts = ort_spy.follow_the_cache(spy, generator.manifest)
    decoder_runs = sum(n for graph, n in counts.items() if graph != m.graphs["cache_reorder"].file
                       and graph != m.graphs["encoder"].file)
    assert decoder_runs == steps
    assert all(len(shape) == 3 and shape[1:] == (1, m.vocab_size) for shape in spy.host_copies), spy.host_copies
    reorders = counts.get(m.graphs["cache_reorder"].file, 0)
    if num_beams == 1:
        assert reorders == 0
        key = m.layers[0].present_self_key
        written = [run.outputs[key] for run in spy.runs if key in run.outputs]
        if generator.runner.self_cache_in_place:  # one buffer, read as past and written as present by every step
            read = [run.inputs[m.layers[0].past_self_key] for run in spy.runs if key in run.outputs]
            assert len(written) == steps and len(set(written)) == 1 and read == written
        else:  # the self cache alternates between two buffers the runner made (past read from one, present
            # written into the other): no allocation per step
            assert len(written) == steps and len(set(written)) == 2 and \
                written[0::2] == [written[0]] * len(written[0::2])
    else:  # the first step's caches widened to the beams (self + cross), then one reorder per later step
        assert reorders >= 2 + 3, counts


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=64), multiple=st.sampled_from([1, 16]),
       copy_cost=st.sampled_from([0.0, 0.04, 0.17, 0.23]), call_cost=st.sampled_from([64, 180]))
def test_length_groups_partition_the_rows_and_cost_less_than_one_call(lengths, multiple, copy_cost, call_cost):
    from ortdecode.runner import length_groups

    lengths = np.array(lengths)
    width_of_all = int(-(-max(lengths.max(), 1) // multiple) * multiple)
    one_call = len(lengths) * width_of_all + call_cost
    groups = length_groups(lengths, multiple, copy_cost=copy_cost, call_cost=call_cost)
    if groups is None:
        return
    rows = np.concatenate([r for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(len(lengths))) and len(groups) > 1
    for group_rows, width in groups:
        assert (lengths[group_rows] <= width).all() and width % multiple == 0 and width >= 1
    copying = copy_cost * len(lengths) * width_of_all  # the groups' outputs put back together
    assert sum(len(r) * width + call_cost for r, width in groups) + copying < one_call


def test_int8_encoders_keep_inputs_of_similar_lengths_in_one_call_where_float32_ones_split_them():
    """Putting the groups' outputs together costs more, next to an int8 encoder's cheaper positions."""
    from ortdecode.runner import _ENCODER_COPY_COST, length_groups

    similar = np.random.default_rng(0).integers(16, 49, 32)  # the benchmark's inputs
    assert length_groups(similar, copy_cost=_ENCODER_COPY_COST[None]) is not None
    assert length_groups(similar, copy_cost=_ENCODER_COPY_COST["int8-dynamic"]) is None
    mixed = np.r_[np.full(16, 8), np.full(16, 200)]  # very different lengths: split either way
    assert length_groups(mixed, copy_cost=_ENCODER_COPY_COST["int8-dynamic"]) is not None


def test_packed_encoders_split_only_inputs_of_very_different_lengths():
    """A packed encoder computes each real token once however the inputs are grouped: the harness's 32 inputs of
    16-48 tokens stay in one call (an unpacked float32 encoder splits them), 32 of 5-200 tokens are split."""
    from benchmarks.run import make_mixed_sources, make_sources
    from ortdecode.runner import _ENCODER_COPY_COST, _PACKED_ENCODER_COSTS, length_groups

    similar = np.array([len(source) for source in make_sources(0, 32, vocab_size=32128)])
    assert length_groups(similar, **_PACKED_ENCODER_COSTS) is None
    assert length_groups(similar, copy_cost=_ENCODER_COPY_COST[None]) is not None
    mixed = np.array([len(source) for source in make_mixed_sources(0, 32, vocab_size=32128)])
    groups = length_groups(mixed, **_PACKED_ENCODER_COSTS)
    assert groups is not None and len(groups) == 4


@pytest.mark.parametrize("layout", ["with-past", "split"])  # the encoder returns the cross cache / hidden states
@pytest.mark.parametrize("packed", [True, False], ids=["packed-encoder", "unpacked-encoder"])
def test_inputs_of_very_different_lengths_skip_the_padding_and_decode_as_alone(tiny_v1, unpacked_encoder_export,
                                                                              layout, packed, monkeypatch):
    """A packed encoder (the default export) runs once on these 8 inputs (5 to 40 tokens), its per-token work on
    the real tokens only; an unpacked one runs once per group of similar lengths. Either way every input's encoder
    output (at its real positions), logits and generated tokens are those it gets alone."""
    generator = ortdecode.load(tiny_v1.export if packed else unpacked_encoder_export, provider="cpu",
                               decoder_layout=layout)
    assert generator.manifest.encoder_packs_tokens is packed
    texts = [TEXTS[0], TEXTS[4] * 3, TEXTS[3], TEXTS[2] * 3, TEXTS[5], TEXTS[4] * 3, TEXTS[0], TEXTS[7]]
    runner = generator.runner
    ids, mask = encode(generator, texts)
    widths, run = [], runner._run_encoder
    monkeypatch.setattr(runner, "_run_encoder", lambda i, m: widths.append(i.shape) or run(i, m))
    state = runner.encode(ids, mask)
    if packed:
        assert widths == [ids.shape]
    else:
        assert len(widths) > 1 and all(w[1] <= ids.shape[1] for w in widths) and \
            min(w[1] for w in widths) < ids.shape[1]
    assert sum(w[0] for w in widths) == len(texts)

    def encoder_outputs(state):  # [(array, its source-length axis)]: the cross cache (with-past) or the hidden states
        if state.encoder_hidden is None:
            return [(value.numpy(), 2) for value in state.cross_cache]
        return [(state.encoder_hidden.numpy(), 1)]

    outputs = encoder_outputs(state)
    for row, text in enumerate(texts):
        alone_ids, alone_mask = encode(generator, [text])
        alone = encoder_outputs(runner.encode(alone_ids, alone_mask))
        length = alone_ids.shape[1]
        for (batch_array, axis), (alone_array, _) in zip(outputs, alone):
            np.testing.assert_allclose(batch_array[row].take(range(length), axis=axis - 1), alone_array[0], atol=1e-5)
    batch = generator.generate(texts, max_new_tokens=8, num_beams=2)
    for row, text in enumerate(texts):
        alone = generator.generate(text, max_new_tokens=8, num_beams=2)
        np.testing.assert_array_equal(batch.sequences[row][:alone.sequences.shape[1]], alone.sequences[0])


# ---------------------------------------------------------------- a self cache updated in place (CPU, with-past)
def test_a_cache_updated_in_place_grows_in_steps_and_decodes_like_the_split_layout(tiny_v1):
    """Without `steps_left` a store has room for 16 more columns: 40 steps make three stores, each written in
    place step after step, and the logits are the split layout's (exact past and present) at every step."""
    in_place = ortdecode.load(tiny_v1.export, provider="cpu").runner
    split = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout="split").runner
    assert in_place.self_cache_in_place and not split.self_cache_in_place
    ids, mask = encode(ortdecode.load(tiny_v1.export, provider="cpu"), TEXTS[:3])
    states = [in_place.encode(ids, mask), split.encode(ids, mask)]
    stores, tokens = [], np.zeros(3, np.int64)
    for step in range(40):
        a, b = in_place.step(states[0], tokens), split.step(states[1], tokens)
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"step {step}")
        stores.append((states[0].self_store[0].ctypes.data, states[0].self_store[0].shape[2]))
        assert states[0].self_cache[0].data_ptr() == states[0].self_store[0].ctypes.data
        tokens = (tokens * 7 + step + 3) % 100
    assert [columns for _, columns in dict.fromkeys(stores)] == [16, 32, 48]


def test_a_cache_updated_in_place_is_bound_once_and_each_step_returns_logits_of_its_own(tiny_v1, monkeypatch):
    """Steps over a store that stays put bind only what changes (the tokens, the masks, the logits' output) to
    the binding they reuse; the logits of every step are a buffer of their own, unchanged by later steps, and
    equal to the split layout's; a store replaced (more columns) is bound again."""
    runner = ortdecode.load(tiny_v1.export, provider="cpu").runner
    split = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout="split").runner
    assert runner.self_cache_in_place
    ids, mask = encode(ortdecode.load(tiny_v1.export, provider="cpu"), TEXTS[:3])
    state, reference = runner.encode(ids, mask), split.encode(ids, mask)
    feeds = [np.zeros(3, np.int64)]
    for step in range(19):
        feeds.append((feeds[-1] * 7 + step + 3) % 100)
    expected = [split.step(reference, tokens) for tokens in feeds]
    spy = ort_spy.install(monkeypatch)
    kept = []
    for tokens in feeds:  # a store of 16 columns, then one of 32
        logits = runner.step(state, tokens)
        kept.append((logits, logits.copy()))
    for step, ((logits, copy), split_logits) in enumerate(zip(kept, expected)):
        assert np.array_equal(logits, copy), f"step {step}: later steps overwrote its logits"
        np.testing.assert_allclose(logits, split_logits, atol=1e-5, err_msg=f"step {step}")
    m = runner.manifest
    caches = {name for layer in m.layers for name in (layer.past_self_key, layer.past_cross_value,
                                                      layer.present_self_key, layer.present_self_value)}
    decoder_runs = [run for run in spy.runs if m.layers[0].present_self_key in run.outputs]
    binds_caches = [step for step, run in enumerate(decoder_runs) if caches & set(run.bound_now)]
    assert binds_caches == [0, 16], binds_caches  # the first step, and the step that made the larger store
    assert all(m.names.logits in run.bound_now for run in decoder_runs)


def test_a_store_planned_for_every_step_is_made_once(generator):
    runner = generator.runner
    state = runner.encode(*encode(generator, TEXTS[:2]))
    for step in range(12):
        runner.step(state, np.full(2, step, np.int64), steps_left=12 - step)
        assert state.self_store[0].shape[2] == 12  # room for the 12 steps, no more, from the first
    runner.step(state, np.zeros(2, np.int64), steps_left=1)  # one step more than planned: a larger store
    assert state.past == 13 and state.self_store[0].shape[2] >= 13


@pytest.mark.parametrize("planned", [None, 40], ids=["store-growing", "store-planned"])
def test_beam_reorders_of_a_cache_updated_in_place_decode_like_the_split_layout(tiny_v1, planned):
    """Beams reordered within the store (rows leaving too: the kept rows are drawn in order with repeats),
    whether the store grows on the way or was planned for every step: the split layout's logits."""
    in_place = ortdecode.load(tiny_v1.export, provider="cpu").runner
    split = ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout="split").runner
    ids, mask = encode(ortdecode.load(tiny_v1.export, provider="cpu"), TEXTS[:2])
    states = [in_place.encode(ids, mask), split.encode(ids, mask)]
    rng = np.random.default_rng(0)
    tokens, stores = np.zeros(2, np.int64), set()
    for step in range(20):
        a = in_place.step(states[0], tokens, steps_left=None if planned is None else planned - step)
        np.testing.assert_allclose(a, split.step(states[1], tokens), atol=1e-5, err_msg=f"step {step}")
        rows = rng.permutation(rng.integers(0, states[0].rows, 4)) if step else np.repeat(np.arange(2), 2)
        for runner, state in zip((in_place, split), states):
            runner.select(state, rows)
        stores.add(states[0].self_store[0].ctypes.data)  # after the first reorder: the widened store
        tokens = rng.integers(2, 100, 4)
    # written in place: a new store only for the beams of the first step and (unplanned) to grow at 16 columns
    assert len(stores) == (3 if planned is None else 2)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_rows_moved_within_a_store_are_what_indexing_would_give(data):
    from ortdecode.runner import _move_rows

    count, past = data.draw(st.integers(1, 12)), data.draw(st.integers(0, 5))
    rows = np.array(data.draw(st.lists(st.integers(0, count - 1), max_size=count)), dtype=np.int64)
    arrays = [np.random.default_rng(count).standard_normal((count, 2, 6, 3)).astype(np.float32) for _ in range(2)]
    expected = [array[rows, :, :past].copy() for array in arrays]
    untouched = [array[:, :, past:].copy() for array in arrays]
    _move_rows(arrays, rows, past)
    for array, want, rest in zip(arrays, expected, untouched):
        np.testing.assert_array_equal(array[:len(rows), :, :past], want)
        np.testing.assert_array_equal(array[:, :, past:], rest)


def test_a_cache_planned_for_a_long_generation_becomes_resident_only_as_steps_write_it(tiny_v1):
    """max_new_tokens=100,000 plans an in-place store of up to 64 MiB. Huge pages would make all of it resident
    (and zero it) at the first step; the store's pages must come only as steps write columns. 20 beam steps,
    then two such states joined (the joined store keeps their planned columns), in a fresh process: the peak
    RSS grows by less than 32 MiB over a short warm-up generation's."""
    import subprocess
    import sys

    code = ("import numpy as np\nimport ortdecode\n"
            "def peak():\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) >> 10\n"
            f"generator = ortdecode.load({str(tiny_v1.export)!r}, provider='cpu')\n"
            f"texts = {TEXTS[:3]!r}\n"
            "generator.generate(texts, num_beams=2, max_new_tokens=20, min_new_tokens=20)\n"
            "before = peak()\n"
            "result = generator.generate(texts, num_beams=2, max_new_tokens=100_000, min_new_tokens=100_000,\n"
            "                            stopping_criteria=[lambda ids, scores: ids.shape[1] > 20])\n"
            "runner, states = generator.runner, []\n"
            "for part in (texts[:2], texts[2:]):\n"
            "    states.append(runner.encode(*generator.tokenizer.encode(part)))\n"
            "    runner.step(states[-1], np.zeros(len(part), np.int64), steps_left=100_000)\n"
            "joined = runner.join([(state, np.arange(state.rows)) for state in states])\n"
            "print(result.sequences.shape[1], joined.self_store[0].shape[2], before, peak())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    length, joined_columns, before, after = map(int, run.stdout.split())
    manifest = ortdecode.read_manifest(tiny_v1.export)
    assert manifest.self_cache_in_place and length == 21 and joined_columns > 1024
    assert after - before < 32, (before, after)

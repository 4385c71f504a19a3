"""The batch engine: requests joining and leaving a running batch decode exactly as they do alone."""

import threading
import time

import numpy as np
import pytest

import ortdecode
from ortdecode.engine import BatchEngine, EngineClosedError, QueueFullError

from .conftest import TEXTS

# Mixed options: greedy, beam search (with several returned sequences), seeded sampling, processors,
# stop strings and length limits. Every request's tokens must not depend on its neighbours.
OPTIONS = [
    dict(max_new_tokens=9),
    dict(max_new_tokens=6, num_beams=3, num_return_sequences=2),
    dict(max_new_tokens=12, do_sample=True, seed=7, top_k=20, temperature=0.8),
    dict(max_new_tokens=8, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(max_new_tokens=10, num_beams=2, length_penalty=0.5),
    dict(max_new_tokens=5, do_sample=True, seed=3, num_return_sequences=2, top_p=0.9),
    dict(max_new_tokens=14, min_new_tokens=4),
    dict(max_new_tokens=3),
]


@pytest.fixture(scope="module", params=["split", "merged", "with-past"])
def generator(request, tiny_v1):
    """with-past: the default CPU export (the encoder computes the cross cache; the self cache is written in place)."""
    if request.param == "with-past":
        generator = ortdecode.load(request.getfixturevalue("with_past_export"), provider="cpu")
        assert generator.runner.layout == "with-past" and generator.runner.self_cache_in_place
        return generator
    return ortdecode.load(tiny_v1.export, provider="cpu", decoder_layout=request.param)


@pytest.fixture(scope="module")
def maskless_generator(tiny_v1, tmp_path_factory):
    """tiny-v1 exported the old way: no decoder attention mask."""
    from ortdecode_export import export_model

    folder = tmp_path_factory.mktemp("maskless") / "onnx"
    export_model(str(tiny_v1.checkpoint), folder, layout="split", validate=False, progress=False, decoder_mask=False)
    return ortdecode.load(folder, provider="cpu")


def assert_same_result(got, alone, what):
    np.testing.assert_array_equal(got.sequences, alone.sequences, err_msg=what)
    assert got.texts == alone.texts and got.finish_reasons == alone.finish_reasons, what
    if alone.sequences_scores is None:
        assert got.sequences_scores is None, what
    else:
        np.testing.assert_allclose(got.sequences_scores, alone.sequences_scores, atol=1e-5, err_msg=what)


def run_schedule(engine, arrivals):
    """arrivals: (step, text, options). Submits each at its step; steps until all finished."""
    requests, step = [], 0
    pending = sorted(arrivals, key=lambda a: a[0])
    while pending or any(not r.finished for r, _, _ in requests):
        while pending and pending[0][0] <= step:
            _, text, options = pending.pop(0)
            request = engine.submit(text, **options)
            request.joined_busy_batch = engine.running_requests > 0
            requests.append((request, text, options))
        engine.step()
        step += 1
        assert step < 500
    return requests


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requests_joining_at_random_steps_decode_as_alone(generator, seed):
    rng = np.random.default_rng(seed)
    arrivals = [(int(rng.integers(0, 12)), TEXTS[int(rng.integers(len(TEXTS)))], OPTIONS[i])
                for i in rng.permutation(len(OPTIONS))]
    arrivals += [(int(rng.integers(0, 12)), "spell out: 1234", dict(max_new_tokens=20, stop=["one"]))]
    engine = BatchEngine(generator, max_batch_rows=12)
    assert engine.continuous
    requests = run_schedule(engine, arrivals)
    for request, text, options in requests:
        assert request.error is None
        assert_same_result(request.result, generator.generate(text, **options), f"{text!r} {options}")
    assert sum(r.joined_busy_batch for r, _, _ in requests) >= len(requests) // 2


def test_requests_admitted_together_share_one_encoder_pass_and_decode_as_alone(generator, monkeypatch):
    """Newcomers of one step (different lengths and options, some joining a running batch) run their encoder
    pass and first decoder step as one batch, right-padded, and join in place: each decodes as it does alone."""
    engine = BatchEngine(generator, max_batch_rows=24)
    encoded_batches = []
    encode = generator.runner.encode

    def counted_encode(input_ids, attention_mask):
        encoded_batches.append(len(input_ids))
        return encode(input_ids, attention_mask)

    monkeypatch.setattr(generator.runner, "encode", counted_encode)
    appended_in_place = []
    append = generator.runner._append_in_place
    monkeypatch.setattr(generator.runner, "_append_in_place",
                        lambda parts: appended_in_place.append(append(parts)) or appended_in_place[-1])
    arrivals = [(0, TEXTS[i % len(TEXTS)], options) for i, options in enumerate(OPTIONS[:5])]
    arrivals += [(2, TEXTS[(i + 2) % len(TEXTS)], options) for i, options in enumerate(OPTIONS[5:])]
    requests = run_schedule(engine, arrivals)
    assert encoded_batches == [5, 3]  # one encoder call per admitting step, one row per input
    # the step-2 newcomers were written into the room the running caches left for them (CPU)
    assert sum(joined is not None for joined in appended_in_place) == 1
    for request, text, options in requests:
        assert request.error is None
        assert_same_result(request.result, generator.generate(text, **options), f"{text!r} {options}")


def test_newcomers_first_tokens_are_published_before_the_running_rows_step(generator, monkeypatch):
    """A server sends a newcomer's first token while the batch steps: `step(publish=...)` hands over the
    newcomers' updates before the running rows' decoder step starts, and does not return them again."""
    engine = BatchEngine(generator, max_batch_rows=8)
    running = engine.submit(TEXTS[0], max_new_tokens=12, min_new_tokens=12)
    engine.step()
    events = []
    step = generator.runner.step
    monkeypatch.setattr(generator.runner, "step", lambda state, tokens, **kw: events.append(
        ("first step" if not state.self_cache else f"step of {state.rows} rows")) or step(state, tokens, **kw))
    newcomers = [engine.submit(text, max_new_tokens=6, **options) for text, options in
                 ((TEXTS[1], {}), (TEXTS[2], dict(num_beams=2)))]
    returned = engine.step(publish=lambda updates: events.append([u.request for u in updates]))
    assert events == ["first step", newcomers, "step of 1 rows"]
    assert [u.request for u in returned] == [running] and all(len(u.new_token_ids[0]) == 1 for u in returned)
    engine.step(publish=lambda updates: pytest.fail("nobody joined: nothing to publish early"))
    while not all(r.finished for r in [running, *newcomers]):
        engine.step()
    for request, text, options in ((running, TEXTS[0], dict(max_new_tokens=12, min_new_tokens=12)),
                                   (newcomers[0], TEXTS[1], dict(max_new_tokens=6)),
                                   (newcomers[1], TEXTS[2], dict(max_new_tokens=6, num_beams=2))):
        assert_same_result(request.result, generator.generate(text, **options), text)


def test_a_full_batch_admits_requests_as_rows_free_up(generator):
    engine = BatchEngine(generator, max_batch_rows=4, max_batch_tokens=10_000)
    requests = [engine.submit(text, max_new_tokens=4 + i, num_beams=2) for i, text in enumerate(TEXTS[:5])]
    engine.step()
    assert engine.running_rows == 4 and engine.running_requests == 2 and engine.waiting_requests == 3
    while not all(r.finished for r in requests):
        engine.step()
        assert engine.running_rows <= 4
    for i, (request, text) in enumerate(zip(requests, TEXTS[:5])):
        assert_same_result(request.result, generator.generate(text, max_new_tokens=4 + i, num_beams=2), text)


def test_the_token_cap_counts_input_and_new_tokens(generator):
    engine = BatchEngine(generator, max_batch_tokens=40)
    first = engine.submit(TEXTS[0], max_new_tokens=25)
    second = engine.submit(TEXTS[0], max_new_tokens=25)
    engine.step()
    assert engine.running_requests == 1 and engine.waiting_requests == 1
    assert first.tokens == first.input_length + 25
    while not second.finished:
        engine.step()
    assert first.finished


def test_limits_and_queue_are_bounded(generator):
    engine = BatchEngine(generator, max_batch_rows=4, max_batch_tokens=100, max_waiting=2)
    with pytest.raises(ValueError, match="needs 5 decoder rows.*max_batch_rows \\(4\\)"):
        engine.submit(TEXTS[0], num_beams=5)
    with pytest.raises(ValueError, match="counts .* tokens.*max_batch_tokens \\(100\\)"):
        engine.submit(TEXTS[0], max_new_tokens=200)
    with pytest.raises(ValueError, match="`num_beams` has to be an integer >= 1"):
        engine.submit(TEXTS[0], num_beams=0)
    with pytest.raises(ValueError, match="`submit` takes one text"):
        engine.submit(["a", "b"])
    engine.submit(TEXTS[0])
    engine.submit(TEXTS[1])
    with pytest.raises(QueueFullError, match="waiting queue is full \\(2 requests\\)"):
        engine.submit(TEXTS[2])
    engine.close()
    with pytest.raises(EngineClosedError, match="closed"):
        engine.submit(TEXTS[2])
    with pytest.raises(ValueError, match="`max_batch_rows` has to be an integer >= 1"):
        BatchEngine(generator, max_batch_rows=0)


def test_closed_engine_finishes_what_it_holds(generator):
    engine = BatchEngine(generator, max_batch_rows=1)
    requests = [engine.submit(text, max_new_tokens=3) for text in TEXTS[:3]]
    engine.close()
    while engine.wait_for_work(0):
        engine.step()
    assert [r.result.texts for r in requests] == [generator.generate(t, max_new_tokens=3).texts for t in TEXTS[:3]]
    assert engine.step() == []


def test_cancelled_requests_leave_and_the_others_are_unaffected(generator):
    engine = BatchEngine(generator)
    keep = engine.submit(TEXTS[1], max_new_tokens=10, num_beams=2)
    gone = engine.submit(TEXTS[4], max_new_tokens=10)
    queued = engine.submit(TEXTS[2], max_new_tokens=10)
    engine.step()
    engine.step()
    engine.cancel(gone)
    updates = engine.step()
    [update] = [u for u in updates if u.request is gone]
    assert update.finished and gone.result.finish_reasons == ["cancelled"]
    assert len(gone.result.sequences[0]) == 3  # start token + the two tokens it had
    assert engine.running_rows == 3
    engine.cancel(queued)
    while not keep.finished:
        engine.step()
    assert_same_result(keep.result, generator.generate(TEXTS[1], max_new_tokens=10, num_beams=2), "kept")
    assert engine.running_rows == 0


def test_a_request_timing_out_while_waiting_finishes_with_reason_time(generator):
    engine = BatchEngine(generator, max_batch_rows=1)
    busy = engine.submit(TEXTS[0], max_new_tokens=5)
    late = engine.submit(TEXTS[1], max_new_tokens=5, max_time=1e-9)
    while not (busy.finished and late.finished):
        engine.step()
    assert late.result.finish_reasons == ["time"] and late.result.texts == [""]


def test_updates_stream_the_text_of_each_sequence(generator):
    engine = BatchEngine(generator)
    request = engine.submit(TEXTS[3], max_new_tokens=12, min_new_tokens=12, do_sample=True, seed=1,
                            num_return_sequences=2)
    pieces, tokens = ["", ""], [[], []]
    while not request.finished:
        for update in engine.step():
            for i in range(2):
                pieces[i] += update.text_deltas[i]
                tokens[i] += update.new_token_ids[i]
    assert pieces == request.result.texts
    assert [list(seq[1:]) for seq in request.result.sequences] == tokens and len(tokens[0]) == 12
    assert request.created <= request.first_token_at <= request.finished_at


def test_an_export_without_decoder_mask_batches_statically_and_exactly(maskless_generator):
    assert not maskless_generator.runner.has_decoder_mask
    with pytest.warns(UserWarning, match="no decoder attention mask; batches are static"):
        engine = BatchEngine(maskless_generator)
    assert not engine.continuous
    first = [engine.submit(t, max_new_tokens=6, num_beams=2) for t in TEXTS[:2]]
    engine.step()
    late = engine.submit(TEXTS[2], max_new_tokens=4)
    engine.step()
    assert engine.waiting_requests == 1 and engine.running_requests == 2  # waits for the batch to end
    while not late.finished:
        engine.step()
    for request, text in zip(first, TEXTS[:2]):
        assert_same_result(request.result, maskless_generator.generate(text, max_new_tokens=6, num_beams=2), text)
    assert_same_result(late.result, maskless_generator.generate(TEXTS[2], max_new_tokens=4), "late")
    with pytest.raises(ValueError, match="no decoder attention mask, so only rows at the same step"):
        runner = maskless_generator.runner
        ids, mask = maskless_generator.tokenizer.encode(TEXTS[:2])
        a, b = runner.encode(ids[:1], mask[:1]), runner.encode(ids[1:], mask[1:])
        runner.step(a, np.zeros(1, np.int64))
        runner.step(a, np.zeros(1, np.int64))
        runner.step(b, np.zeros(1, np.int64))
        runner.join([(a, np.array([0])), (b, np.array([0]))])


def test_a_failing_request_reports_its_error_and_leaves_the_others_running(generator):
    def broken(input_ids, scores):
        if input_ids.shape[1] > 2:
            raise RuntimeError("processor broke")
        return scores

    engine = BatchEngine(generator)
    healthy = engine.submit(TEXTS[0], max_new_tokens=6)
    failing = engine.submit(TEXTS[1], max_new_tokens=6, logits_processors=[broken])
    errors = []
    while not (healthy.finished and failing.finished):
        errors += [u.error for u in engine.step() if u.error is not None]
    assert [str(e) for e in errors] == ["processor broke"] and failing.result is None
    assert_same_result(healthy.result, generator.generate(TEXTS[0], max_new_tokens=6), "healthy")


def test_requests_submitted_from_other_threads_while_the_engine_runs(generator):
    """The server's shape: one thread steps the engine, client threads submit and wait."""
    engine = BatchEngine(generator, max_batch_rows=6)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            if engine.wait_for_work(0.05):
                engine.step()

    runner = threading.Thread(target=loop)
    runner.start()
    cases = [(TEXTS[i], OPTIONS[i]) for i in range(6)]
    requests = [None] * len(cases)

    def client(index):
        requests[index] = engine.submit(cases[index][0], **cases[index][1])

    try:
        clients = [threading.Thread(target=client, args=(i,)) for i in range(len(cases))]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        deadline = time.monotonic() + 120
        while not all(r.finished for r in requests):
            assert time.monotonic() < deadline, "requests did not finish"
            stop.wait(0.02)
    finally:
        stop.set()
        runner.join()
    for request, (text, options) in zip(requests, cases):
        assert_same_result(request.result, generator.generate(text, **options), f"{text!r} {options}")

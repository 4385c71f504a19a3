"""Why sequences end: eos, length, stop (stop strings, extra EOS ids), time; and Ctrl-C.

Stop strings and extra EOS ids are checked against transformers' own `generate` on the embedded
model, which is also a PyTorch checkpoint. transformers' `StopStringCriteria` cannot be built for this
160-piece tokenizer (it probes the vocabulary with the prefix "abcdef", which the tokenizer cannot
spell), so the reference run uses a stopping criterion with its documented rule: stop once the decoded
text contains the stop string, the token that completes it kept whole."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ortdecode
from ortdecode.errors import GenerationInterrupted

from .conftest import TEXTS

PROMPTS = ["spell out: 4567", "ordinal: 21", "spell out: 700019", "to digits: seven hundred twelve"]


@pytest.fixture(scope="module")
def generator():
    return ortdecode.load(provider="cpu")


@pytest.fixture(scope="module")
def reference(default_model_dir):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    return (T5ForConditionalGeneration.from_pretrained(default_model_dir).eval(),
            AutoTokenizer.from_pretrained(default_model_dir))


def transformers_generate(reference, prompts, stop=(), **options):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    model, tokenizer = reference

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            def text(ids):
                return tokenizer.decode(ids, skip_special_tokens=True)

            return torch.tensor([any(s in text(row[1:]) and s not in text(row[1:-1]) for s in stop)
                                 for row in input_ids.tolist()])

    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=30, stopping_criteria=StoppingCriteriaList([StopStrings()]),
                             **options)
    return out.numpy()


def test_the_reasons_eos_and_length(generator):
    result = generator.generate(PROMPTS, max_new_tokens=30)
    assert result.finish_reasons == ["eos"] * 4
    result = generator.generate(PROMPTS, max_new_tokens=2)
    assert result.finish_reasons == ["length"] * 4 and result.sequences.shape == (4, 3)


STOP_CASES = [
    # "thou" ends inside the token "▁thousand": the token is kept whole.
    (["hundred", "thou", "first"], ["four thousand", "twenty-first", "seven hundred", "712"],
     ["stop", "stop", "stop", "eos"]),
    # Multi-token: "ive hun" starts inside "▁five" and ends inside "▁hundred"; "d thousand n" spans three
    # tokens and is completed by "▁nineteen", the last token before EOS: the reason is still "stop".
    (["ive hun", "d thousand n"], ["four thousand five hundred", "twenty-first", "seven hundred thousand nineteen", "712"],
     ["stop", "eos", "stop", "eos"]),
]


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("stop, texts, reasons", STOP_CASES, ids=["single-token", "multi-token"])
def test_stop_strings_end_sequences_as_transformers_does(generator, reference, num_beams, stop, texts, reasons):
    ours = generator.generate(PROMPTS, max_new_tokens=30, stop=stop, num_beams=num_beams)
    theirs = transformers_generate(reference, PROMPTS, stop=stop, num_beams=num_beams)
    np.testing.assert_array_equal(ours.sequences, theirs)
    assert ours.texts == texts
    assert ours.finish_reasons == reasons


@pytest.mark.parametrize("num_beams", [1, 3])
def test_stop_string_of_two_whole_words(generator, num_beams):
    result = generator.generate("spell out: 4567", stop="five hundred", num_beams=num_beams)
    assert result.texts == ["four thousand five hundred"] and result.finish_reasons == ["stop"]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_extra_eos_ids_end_with_reason_stop(generator, reference, num_beams):
    hundred = generator.tokenizer._tokenizer.token_to_id("▁hundred")
    ours = generator.generate(PROMPTS, max_new_tokens=30, eos_token_id=[1, hundred], num_beams=num_beams)
    theirs = transformers_generate(reference, PROMPTS, eos_token_id=[1, hundred], num_beams=num_beams)
    np.testing.assert_array_equal(ours.sequences, theirs)
    assert ours.finish_reasons == ["stop", "eos", "stop", "eos"]
    assert ours.texts == ["four thousand five hundred", "twenty-first", "seven hundred", "712"]


def test_stream_stops_at_a_stop_string(generator):
    assert "".join(generator.stream("spell out: 4567", stop="five")) == "four thousand five"


@pytest.mark.parametrize("num_beams", [1, 2])
def test_max_time_ends_every_sequence_with_reason_time(tiny_v1, num_beams):
    generator = ortdecode.load(tiny_v1.export, provider="cpu")
    endless = dict(max_new_tokens=100_000, min_new_tokens=100_000, num_beams=num_beams)
    started = time.perf_counter()
    result = generator.generate(TEXTS[:3], max_time=0.3, **endless)
    elapsed = time.perf_counter() - started
    assert result.finish_reasons == ["time"] * 3
    assert 0.3 <= elapsed < 3.0, elapsed
    assert result.sequences.shape[1] > 5  # it decoded until the time ran out


def test_time_reason_in_the_cli(default_model_dir):
    run = subprocess.run([sys.executable, "-m", "ortdecode.cli", "generate", "--provider", "cpu", "--max-time",
                          "1e-9", "--json", "spell out: 4567"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert '"time"' in run.stdout and "max_time (1e-09 s) ran out: 1 of 1 outputs are incomplete" in run.stderr


# ---------------------------------------------------------------- Ctrl-C
def interrupt_at_step(step):
    def processor(input_ids, scores):
        if input_ids.shape[1] == step + 1:
            raise KeyboardInterrupt
        return scores
    return processor


@pytest.mark.parametrize("num_beams", [1, 3])
def test_ctrl_c_in_generate_keeps_what_was_generated(generator, num_beams):
    complete = generator.generate(PROMPTS, num_beams=num_beams)
    with pytest.raises(GenerationInterrupted) as caught:
        generator.generate(PROMPTS, num_beams=num_beams, logits_processors=[interrupt_at_step(3)])
    assert isinstance(caught.value, KeyboardInterrupt)
    partial = caught.value.result
    assert partial.sequences.shape[1] == 4 and set(partial.finish_reasons) == {"interrupted"}
    if num_beams == 1:  # greedy: exactly the first three tokens of the full run
        np.testing.assert_array_equal(partial.sequences, complete.sequences[:, :4])
    assert all(full.startswith(part.split()[0]) for part, full in zip(partial.texts, complete.texts))


def start_cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ortdecode.cli", "generate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_ctrl_c_during_stream_exits_130_after_printing_what_came(tiny_v1):
    process = start_cli("--model", str(tiny_v1.export), "--provider", "cpu", "--stream", "--max-new-tokens", "100000",
                        "--min-new-tokens", "100000", TEXTS[0])
    first = process.stdout.read(1)  # decoding has begun
    time.sleep(0.5)
    started = time.perf_counter()
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=60)
    assert time.perf_counter() - started < 5  # at once: within a step, not at the end of the budget
    assert process.returncode == 130, stderr
    assert first and len(first + rest.rstrip("\n")) > 1 and rest.endswith("\n")
    assert stderr.strip().splitlines()[-1] == "ortdecode: interrupted" and "Traceback" not in stderr


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_ctrl_c_during_generate_prints_the_partial_outputs_and_exits_130(tiny_v1, extra):
    process = start_cli("--model", str(tiny_v1.export), "--provider", "cpu", "--verbose", "--max-new-tokens",
                        "100000", "--min-new-tokens", "100000", *extra, TEXTS[0], TEXTS[1])
    assert process.stderr.readline().startswith("ortdecode: loaded ")  # the model is loaded: decoding begins
    time.sleep(1.0)
    started = time.perf_counter()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert time.perf_counter() - started < 5
    assert process.returncode == 130, stderr
    if extra:
        import json

        results = json.loads(stdout)["results"]
        assert [r["finish_reasons"] for r in results] == [["interrupted"], ["interrupted"]]
        assert all(len(r["outputs"][0]) > 0 for r in results)
    else:
        assert len(stdout.splitlines()) == 2 and all(stdout.splitlines())
    assert stderr.strip().splitlines()[-1] == "ortdecode: interrupted" and "Traceback" not in stderr

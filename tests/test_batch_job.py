"""Batch jobs: token-budget batching, input order, per-input options, error records, files, resume after kill -9."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ortdecode
from ortdecode.batch_job import JobInput, token_batches

from .test_cli import ortdecode as run_cli


def number_texts(count: int, seed: int = 0) -> list[str]:
    """Inputs of 3 to ~40 tokens for the default model, in random length order."""
    rng = random.Random(seed)
    makers = [lambda: f"spell out: {rng.randint(0, 10 ** rng.randint(1, 6))}",
              lambda: f"ordinal: {rng.randint(1, 3000)}",
              lambda: "to digits: " + " ".join(rng.choice(["nine hundred", "twelve", "forty-two thousand", "seven"])
                                               for _ in range(rng.randint(1, 6)))]
    return [rng.choice(makers)() for _ in range(count)]


@pytest.fixture(scope="module")
def generator(default_model_dir):
    return ortdecode.load(default_model_dir, provider="cpu")


@given(st.lists(st.integers(1, 300), min_size=0, max_size=60), st.integers(1, 2000), st.integers(1, 16))
def test_token_batches_hold_every_input_once_within_the_budget(lengths, batch_tokens, batch_size):
    batches = token_batches(lengths, batch_tokens, batch_size)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= batch_size
        assert len(batch) == 1 or len(batch) * longest <= batch_tokens
        assert lengths[batch[0]] == longest  # longest first: the padded size is known when the batch grows
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(lengths, reverse=True)  # length-bucketed: neighbours in length share a batch


def test_results_equal_generate_per_input_and_come_in_input_order(generator):
    texts = number_texts(150)
    results = list(generator.generate_iter(texts, batch_tokens=200, batch_size=16, read_ahead=48, max_new_tokens=24))
    assert [r.line for r in results] == list(range(1, 151))
    for text, result in zip(texts, results):
        alone = generator.generate(text, max_new_tokens=24)
        assert result.error is None and result.outputs == alone.texts and result.finish_reasons == alone.finish_reasons
    assert sum(r.input_tokens for r in results) == sum(len(generator.tokenizer.encode_one(t)) for t in texts)


def test_inputs_run_with_their_own_options_never_batched_with_others(generator):
    texts = number_texts(24, seed=1)
    options = [{}, {"num_beams": 3, "num_return_sequences": 2}, {"max_new_tokens": 3},
               {"do_sample": True, "seed": 5, "top_k": 0}, {"repetition_penalty": 1.5}, {"num_beams": 3, "length_penalty": 0.5}]
    inputs = [{"id": f"x{i}", "text": text, "parameters": options[i % len(options)]} for i, text in enumerate(texts)]
    results = list(generator.generate_iter(inputs, batch_size=8))
    for item, result in zip(inputs, results):
        alone = generator.generate(item["text"], **item["parameters"])
        assert result.id == item["id"] and result.outputs == alone.texts, item


def test_job_options_apply_to_every_input_and_inputs_override_them(generator):
    inputs = ["spell out: 123456", {"text": "spell out: 123456", "parameters": {"max_new_tokens": 6}}]
    short, longer = generator.generate_iter(inputs, max_new_tokens=2)
    assert short.outputs == generator.generate(inputs[0], max_new_tokens=2).texts and short.finish_reasons == ["length"]
    assert longer.outputs == generator.generate(inputs[0], max_new_tokens=6).texts


def test_scores_are_beam_search_sequence_scores(generator):
    result, greedy = generator.generate_iter(["ordinal: 12", {"text": "ordinal: 12", "parameters": {"num_beams": 1, "num_return_sequences": 1}}],
                                             scores=True, num_beams=4, num_return_sequences=2)
    expected = generator.generate("ordinal: 12", num_beams=4, num_return_sequences=2).sequences_scores
    assert result.scores == pytest.approx(expected.tolist())
    assert greedy.error == "scores need beam search (`num_beams` > 1), but `num_beams` is 1"


BAD_INPUTS = [  # (input, error fragment)
    ("   ", "line 2: the text is empty or whitespace only"),
    ({"text": "ordinal: 2", "parameters": {"top_p": 1.5}}, "line 2: `top_p` has to be a float in (0, 1], but is 1.5"),
    ({"text": "ordinal: 2", "parameters": {"beams": 2}}, "line 2: unknown generation option(s): beams"),
    ({"text": "ordinal: 2", "parameters": {"eos_token_id": [10 ** 6]}}, "line 2: `eos_token_id` has to hold token ids"),
    ({"text": "ordinal: 2", "parameters": ["num_beams"]}, "line 2: \"parameters\" has to be an object"),
    ({"id": "q"}, "line 2: \"text\" is missing"),
    ({"text": 42}, "line 2: \"text\" has to be a string, but is a int"),
    ({"text": "spell out: " + "9 " * 40, "parameters": {"max_input_tokens": 20}},
     "line 2: the text has 84 tokens, more than `max_input_tokens` (20)"),
    (3.5, "line 2: an input has to be a text or a dict, but is a float"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUTS, ids=[m.split(": ", 1)[1][:30] for _, m in BAD_INPUTS])
def test_a_bad_input_becomes_an_error_record_and_the_job_goes_on(generator, bad, message, record):
    results = list(generator.generate_iter(["ordinal: 1", bad, "ordinal: 3"]))
    assert results[1].to_record()["error"].startswith(message) and results[1].to_record()["line"] == 2
    assert "outputs" not in results[1].to_record()
    assert [r.outputs for r in results[::2]] == [generator.generate(t).texts for t in ("ordinal: 1", "ordinal: 3")]
    record("batch job: bad inputs reported as error records", message.split(": ", 1)[1][:40])


def test_truncated_inputs_are_marked(generator):
    result, = generator.generate_iter(["spell out: " + "9 " * 40], max_input_tokens=20, truncate_input=True)
    assert result.truncated and result.to_record()["truncated"] is True and result.input_tokens == 20


def test_bad_job_options_raise(generator):
    with pytest.raises(ValueError, match="`batch_tokens` has to be an integer >= 1, but is 0"):
        generator.generate_iter(["ordinal: 1"], batch_tokens=0)  # at the call, before any input is read
    with pytest.raises(ValueError, match="`read_ahead` has to be an integer >= 1, but is True"):
        generator.generate_iter(["ordinal: 1"], read_ahead=True)
    with pytest.raises(ValueError, match="`num_beams` has to be an integer >= 1, but is 0"):
        generator.generate_iter(["ordinal: 1"], num_beams=0)


def test_job_input_objects_keep_their_line_and_id(generator):
    result, = generator.generate_iter([JobInput(line=41, text="ordinal: 4", id="k")])
    assert result.to_record() == {"line": 41, "id": "k", "outputs": generator.generate("ordinal: 4").texts,
                                  "finish_reasons": ["eos"]}


# ---------------------------------------------------------------- files and the command line
def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_job_writes_one_record_per_line_in_order_and_counts_failures(tmp_path, generator):
    lines = [json.dumps({"id": "a", "text": "spell out: 4521"}), "{not json", b"\xff\xfe",
             json.dumps({"text": "ordinal: 21", "parameters": {"num_beams": 2}}), ""]
    source = write_lines(tmp_path / "in.jsonl", lines)
    run = run_cli("generate", "--input", str(source), "--output", str(tmp_path / "out.jsonl"), "--batch-size", "2")
    assert run.returncode == 3, run.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5] and records[0]["id"] == "a" and records[3]["id"] == 4
    assert records[0]["outputs"] == generator.generate("spell out: 4521").texts
    assert records[3]["outputs"] == generator.generate("ordinal: 21", num_beams=2).texts
    assert records[1]["error"].startswith("line 2: not JSON")
    assert records[2]["error"] == "line 3: not UTF-8 text (byte 0xff at offset 0)"
    assert records[4]["error"] == "line 5: empty line (a JSON object was expected)"
    summary = run.stderr.strip().splitlines()[-1]
    assert summary.startswith("ortdecode: 5 inputs in ") and summary.endswith("3 failed (error records in "
                                                                              f"{tmp_path / 'out.jsonl'})")


def test_file_job_reads_plain_text_from_stdin_and_exits_0(tmp_path, generator):
    texts = number_texts(10, seed=2)
    run = run_cli("generate", "--input", "-", "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "8",
                  stdin="\n".join(texts) + "\n")
    assert run.returncode == 0, run.stderr
    assert [r["outputs"][0] for r in read_records(tmp_path / "out.jsonl")] == \
        [generator.generate(t, max_new_tokens=8).texts[0] for t in texts]
    assert run.stderr.strip().splitlines()[-1].endswith("; 0 failed")


def test_file_mode_refuses_texts_and_a_missing_output(tmp_path):
    run = run_cli("generate", "--input", "x.txt", "hello")
    assert run.returncode == 2 and "file mode takes --input FILE and --output FILE, and no TEXT" in run.stderr
    run = run_cli("generate", "--input", "x.txt", "--output", str(tmp_path / "o"), "--batch-size", "0")
    assert run.returncode == 2 and "`batch_size` has to be an integer >= 1, but is 0" in run.stderr
    run = run_cli("generate", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o"))
    assert run.returncode == 2 and f"the input file {tmp_path / 'nope.txt'} does not exist" in run.stderr


def test_resume_refuses_an_output_of_another_job(tmp_path, generator):
    source = write_lines(tmp_path / "in.txt", ["ordinal: 1", "ordinal: 2"])
    write_lines(tmp_path / "out.jsonl", ['{"line": 7, "id": 7}'])
    with pytest.raises(ValueError, match=r"out.jsonl line 1 holds the record of input line 7; it is not this job"):
        generator.generate_file(str(source), str(tmp_path / "out.jsonl"))
    write_lines(tmp_path / "out.jsonl", ["plain text"])
    with pytest.raises(ValueError, match=r"out.jsonl line 1 is not a record of `ortdecode generate`"):
        generator.generate_file(str(source), str(tmp_path / "out.jsonl"))


def test_a_job_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path, generator):
    texts = number_texts(1200, seed=3)
    source = write_lines(tmp_path / "in.txt", texts)
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "ortdecode.cli", "generate", "--input", str(source), "--output", str(output),
               "--batch-size", "8", "--quiet"]
    job = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not output.exists() or output.read_bytes().count(b"\n") < 100) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    done = output.read_bytes().count(b"\n")
    assert 100 <= done < len(texts), "the job was not killed mid-run"
    with open(output, "ab") as handle:  # a record torn by the crash
        handle.write(b'{"line": ' + str(done + 1).encode() + b', "id": 9, "outp')
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"(after {done} written by an earlier run)" in rerun.stderr
    expected = [r.to_record() for r in generator.generate_iter(texts)]
    assert read_records(output) == expected


def stderr_on_a_terminal(command) -> str:
    """Run `command` with stderr on a pseudo-terminal; what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    chunks = []

    def read():
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    subprocess.run(command, stderr=follower, stdout=subprocess.DEVNULL, timeout=300, check=False)
    os.close(follower)
    reader.join(timeout=10)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_unless_quiet(tmp_path):
    source = write_lines(tmp_path / "in.txt", number_texts(20, seed=4))
    base = [sys.executable, "-m", "ortdecode.cli", "generate", "--input", str(source), "--provider", "cpu"]
    shown = stderr_on_a_terminal(base + ["--output", str(tmp_path / "a.jsonl")])
    assert "20/20" in shown and "input/s" in shown and "tokens/s" in shown
    quiet = stderr_on_a_terminal(base + ["--output", str(tmp_path / "b.jsonl"), "--quiet"])
    assert "input/s" not in quiet and "ortdecode: 20 inputs in " in quiet

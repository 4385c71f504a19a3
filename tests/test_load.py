"""Load and long uptime: many threads on one generator, memory over many calls, repeatability."""

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import ortdecode

from .conftest import TEXTS

PROMPTS = ["spell out: 4567", "ordinal: 21", "spell out: 700019", "to digits: seven hundred twelve",
           "spell out: 90", "ordinal: 100000", "to digits: twelve thousand three hundred forty-five", "spell out: 3"]
# Greedy, seeded sampling and beam search, on single texts and batches, on a random tiny T5 (its
# samples differ from its greedy output, unlike the confident embedded model's).
CALLS = [
    (TEXTS[0], dict(max_new_tokens=12)),
    (TEXTS[1:4], dict(max_new_tokens=12)),
    (TEXTS[4], dict(do_sample=True, seed=11, temperature=1.5, top_k=0, max_new_tokens=12)),
    (TEXTS[2:7], dict(do_sample=True, seed=12, top_p=0.9, num_return_sequences=2, max_new_tokens=12)),
    (TEXTS[6], dict(num_beams=3, num_return_sequences=2, max_new_tokens=12)),
    (TEXTS[:2], dict(num_beams=2, do_sample=True, seed=13, max_new_tokens=12)),
]
THREADS = 16


def test_16_threads_on_one_generator_get_the_sequential_results(tiny_v1, record):
    generator = ortdecode.load(tiny_v1.export, provider="cpu")
    expected = [generator.generate(texts, **options).sequences for texts, options in CALLS]
    greedy_of_sampled = generator.generate(TEXTS[4], max_new_tokens=12).sequences
    assert not np.array_equal(expected[2], greedy_of_sampled)  # sampling is really sampling here
    start = threading.Barrier(THREADS)
    results: dict[tuple[int, int], np.ndarray] = {}
    errors = []

    def worker(thread):
        try:
            start.wait()
            for round_ in range(3):
                for i in range(len(CALLS)):
                    call = (i + thread + round_) % len(CALLS)  # threads run different calls at the same time
                    texts, options = CALLS[call]
                    results[(thread, round_, call)] = generator.generate(texts, **options).sequences
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    assert len(results) == THREADS * 3 * len(CALLS)
    for (thread, round_, call), sequences in results.items():
        np.testing.assert_array_equal(sequences, expected[call], err_msg=f"thread {thread}, call {call}")
    section = "concurrency: one generator shared by threads"
    record(section, "threads", THREADS)
    record(section, "generate calls, all equal to the sequential results", len(results))
    record(section, "kinds of call", "greedy, seeded sampling (top-k 0, top-p), beam 3, beam sampling")


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import ortdecode

    def rss_kib():
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])

    prompts = json.loads(sys.argv[1])
    calls, warmup = int(sys.argv[2]), int(sys.argv[3])
    generator = ortdecode.load(provider="cpu")
    def call(i):
        text = prompts[i % len(prompts)]
        if i % 3 == 0:
            generator.generate(text)
        elif i % 3 == 1:
            generator.generate(prompts[:3], do_sample=True, seed=i, return_logits=True)
        else:
            generator.generate(text, num_beams=3)
    for i in range(warmup):
        call(i)
    before = rss_kib()
    samples = []
    for i in range(calls):
        call(i)
        if i % 100 == 99:
            samples.append(rss_kib())
    print(json.dumps({"before_kib": before, "after_kib": rss_kib(), "samples_kib": samples}))
""")


def test_memory_does_not_grow_over_1000_generate_calls(record):
    """In a fresh process that imports only ortdecode: RSS after warm-up, then after 1,000 more calls."""
    calls, warmup = 1000, 100
    run = subprocess.run([sys.executable, "-c", RSS_SCRIPT, json.dumps(PROMPTS), str(calls), str(warmup)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    growth = figures["after_kib"] / figures["before_kib"] - 1
    section = "memory: RSS of a process running the embedded model"
    record(section, "warm-up calls", warmup)
    record(section, "measured calls (greedy, sampling with logits, beam 3)", calls)
    record(section, "RSS after warm-up", f"{figures['before_kib'] / 1024:.1f} MiB")
    record(section, "RSS after the calls", f"{figures['after_kib'] / 1024:.1f} MiB ({growth:+.2%})")
    record(section, "RSS every 100 calls (MiB)", " ".join(f"{s / 1024:.1f}" for s in figures["samples_kib"]))
    assert growth < 0.05, figures


def test_same_seed_same_output_in_separate_processes(tiny_v1, record):
    args = ["generate", "--model", str(tiny_v1.export), "--provider", "cpu", "--do-sample", "--seed", "7",
            "--top-k", "0", "--max-new-tokens", "10", "--num-return-sequences", "3", "--json", *TEXTS[:3]]
    runs = [subprocess.run([sys.executable, "-m", "ortdecode.cli", *args], capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    outputs = [o for r in json.loads(runs[0].stdout)["results"] for o in r["outputs"]]
    assert len(set(outputs)) > 3  # the samples do differ from each other: the seed, not greedy, fixes them
    record("repeatability", "processes with the same seed and options, identical output", 2)

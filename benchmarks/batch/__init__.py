"""The batch-job benchmark: `python -m benchmarks.batch [--quick]`.

10,000 inputs of 5 to 200 tokens (log-normal mix, median ~40) on t5-small's shape, CPU, every engine
producing exactly `--new-tokens` tokens per input (min = max) so all do the same work:

- ortdecode `generate_iter`: length-bucketed token-budget batches (the file mode's path);
- ortdecode `generate` on the same inputs in file order, fixed batch size;
- CTranslate2 `translate_iterable(batch_type="tokens")` on the same token ids, float32;
- peak RSS of `ortdecode generate --input ... --output ...` in a fresh process at 1,000 and 10,000 inputs;
- Ray Data: `ortdecode.ray_data.Generate` with 1 actor (2 threads) and 2 actors (1 thread each) against
  the plain CLI on the same file.

Results: benchmarks/results/batch-latest.{md,json,png} (batch-quick.* with --quick).
"""

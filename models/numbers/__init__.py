"""The embedded default model, t5-numbers: a small T5 trained here to spell out numbers and back.

Run `python -m models.numbers` from the repository root to rebuild models/t5-numbers from scratch
(data, tokenizer, training, export through `ortdecode export`'s pipeline, evaluation, model card).
"""

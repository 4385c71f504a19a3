"""The tasks and their data, generated deterministically from a seed.

Held-out numbers are drawn first (3 to 6 digits, one quarter each, 1,000 per task plus a small
validation set) and never appear in training, in any task. Training numbers are drawn by digit count
with more weight on longer numbers, and rejected if held out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spelling import ordinal, spell

TASKS = {
    "spell out": (str, spell),  # "spell out: 4521" -> "four thousand five hundred twenty-one"
    "to digits": (spell, str),  # "to digits: four thousand five hundred twenty-one" -> "4521"
    "ordinal": (str, ordinal),  # "ordinal: 21" -> "twenty-first"
}
TRAIN_DIGIT_WEIGHTS = np.array([0.04, 0.08, 0.16, 0.24, 0.24, 0.24])  # 1..6 digits
HELD_OUT_PER_TASK = 1000
VALIDATION_PER_TASK = 200


def example(task: str, n: int) -> tuple[str, str]:
    source_of, target_of = TASKS[task]
    return f"{task}: {source_of(n)}", target_of(n)


def _number_with_digits(rng: np.random.Generator, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10 ** digits))


@dataclass
class Split:
    test: dict[str, list[int]]  # task -> held-out numbers (evaluation)
    validation: dict[str, list[int]]  # task -> held-out numbers (monitoring during training)

    @property
    def excluded(self) -> set[int]:
        return {n for split in (self.test, self.validation) for numbers in split.values() for n in numbers}


def make_split(seed: int) -> Split:
    rng = np.random.default_rng([seed, 1])
    chosen: list[int] = []
    seen: set[int] = set()
    needed = len(TASKS) * (HELD_OUT_PER_TASK + VALIDATION_PER_TASK)
    while len(chosen) < needed:
        n = _number_with_digits(rng, int(rng.integers(3, 7)))
        if n not in seen:
            seen.add(n)
            chosen.append(n)
    test, validation, start = {}, {}, 0
    for task in TASKS:
        test[task] = chosen[start:start + HELD_OUT_PER_TASK]
        start += HELD_OUT_PER_TASK
        validation[task] = chosen[start:start + VALIDATION_PER_TASK]
        start += VALIDATION_PER_TASK
    return Split(test=test, validation=validation)


def training_numbers(seed: int, count: int, excluded: set[int]) -> list[int]:
    rng = np.random.default_rng([seed, 2])
    numbers: list[int] = []
    while len(numbers) < count:
        n = _number_with_digits(rng, int(rng.choice(6, p=TRAIN_DIGIT_WEIGHTS)) + 1)
        if n not in excluded:
            numbers.append(n)
    return numbers


def training_examples(seed: int, count: int, excluded: set[int]) -> list[tuple[str, str]]:
    """`count` (source, target) pairs, the tasks in turn."""
    tasks = list(TASKS)
    return [example(tasks[i % len(tasks)], n) for i, n in enumerate(training_numbers(seed, count, excluded))]

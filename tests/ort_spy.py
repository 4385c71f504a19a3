"""A spy on ONNX Runtime's Python API (the real calls still run): which buffer each graph input was bound
to, which buffers each run produced, and which `OrtValue`s were copied to the host with `numpy()`.
The device-residency tests use it to follow the KV cache from step to step by buffer address."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnxruntime as ort


@dataclasses.dataclass
class Run:
    graph: str  # file name of the session's graph
    inputs: dict[str, object]  # name -> data_ptr of a bound OrtValue, or ("host", shape) for a host array
    outputs: dict[str, int]  # name -> data_ptr of the produced OrtValue
    # names bound (inputs and outputs) since the binding's last run: a reused binding keeps the others
    bound_now: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Spy:
    runs: list[Run] = dataclasses.field(default_factory=list)
    host_copies: list[tuple[int, ...]] = dataclasses.field(default_factory=list)  # shapes of OrtValue.numpy() calls

    def graphs(self) -> list[str]:
        return [run.graph for run in self.runs]


def install(monkeypatch) -> Spy:
    spy = Spy()
    # What was bound is kept on the binding object itself (ids of collected bindings are reused).

    def bound(binding) -> dict[str, object]:
        return binding.__dict__.setdefault("_spy_inputs", {})

    def output_names(binding) -> list[str]:  # in binding order; binding a name again keeps its place (as ORT)
        return binding.__dict__.setdefault("_spy_outputs", [])

    def bound_now(binding) -> list[str]:
        return binding.__dict__.setdefault("_spy_bound_now", [])

    def wrap(cls, name, before=None, after=None):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            if before:
                before(self, *args, **kwargs)
            result = original(self, *args, **kwargs)
            if after:
                after(self, *args, **kwargs)
            return result

        monkeypatch.setattr(cls, name, wrapper)

    def on_ortvalue_input(binding, name, value):
        bound(binding)[name] = value.data_ptr()
        bound_now(binding).append(name)

    def on_cpu_input(binding, name, array):
        bound(binding)[name] = ("host", tuple(array.shape))
        bound_now(binding).append(name)

    def on_output(binding, name, *args, **kwargs):
        if name not in output_names(binding):
            output_names(binding).append(name)
        bound_now(binding).append(name)

    def on_run(session, binding, *args, **kwargs):
        values = binding.get_outputs()
        names = output_names(binding)
        assert len(names) == len(values), (names, len(values))
        spy.runs.append(Run(Path(session._model_path).name, dict(bound(binding)),
                            {name: value.data_ptr() for name, value in zip(names, values)}, list(bound_now(binding))))
        bound_now(binding).clear()

    wrap(ort.IOBinding, "bind_ortvalue_input", before=on_ortvalue_input)
    wrap(ort.IOBinding, "bind_cpu_input", before=on_cpu_input)
    wrap(ort.IOBinding, "bind_output", before=on_output)
    wrap(ort.IOBinding, "bind_ortvalue_output", before=on_output)  # into a buffer the runner made
    wrap(ort.InferenceSession, "run_with_iobinding", after=on_run)
    wrap(ort.IOBinding, "clear_binding_inputs", before=lambda binding: bound(binding).clear())
    wrap(ort.IOBinding, "clear_binding_outputs", before=lambda binding: output_names(binding).clear())
    wrap(ort.OrtValue, "numpy", before=lambda value: spy.host_copies.append(tuple(value.shape())))
    return spy


def follow_the_cache(spy: Spy, manifest) -> dict[str, int]:
    """Check that every past KV input of every decoder step is bound to the very buffer that the previous
    decoder step produced as its present KV, or that the cache-reorder graph made from that buffer.
    Returns how many runs of each graph happened."""
    layers = manifest.layers
    past = [name for l in layers for name in (l.past_self_key, l.past_self_value, l.past_cross_key, l.past_cross_value)]
    present = [name for l in layers for name in (l.present_self_key, l.present_self_value, l.present_cross_key,
                                                 l.present_cross_value)]
    reorder = list(zip([n for l in layers for n in (l.reorder_in_key, l.reorder_in_value)],
                       [n for l in layers for n in (l.reorder_out_key, l.reorder_out_value)]))
    reorder_file = manifest.graphs["cache_reorder"].file
    latest: dict[str, int] = {}  # past input name -> the buffer that must be bound to it next
    counts: dict[str, int] = {}
    for index, run in enumerate(spy.runs):
        counts[run.graph] = counts.get(run.graph, 0) + 1
        if run.graph == reorder_file:
            for in_name, out_name in reorder:
                slots = [slot for slot, ptr in latest.items() if ptr == run.inputs[in_name]]
                assert slots, f"run {index}: the reorder read a buffer no decoder step produced"
                for slot in slots:
                    latest[slot] = run.outputs[out_name]
            continue
        if not any(name in run.outputs for name in present):
            continue  # the encoder (in the with-past layout it outputs the cross cache: followed from there)
        for name in past:
            if name in latest:
                assert run.inputs.get(name) == latest[name], \
                    f"run {index} ({run.graph}): {name} is not the buffer the previous step or the reorder produced"
            elif name in run.inputs:  # a first step: an empty past from the host, or (a cache updated in
                # place) the buffer the step writes its present into
                bound_to = run.inputs[name]
                assert bound_to == run.outputs.get(present[past.index(name)]) or \
                    (bound_to[0] == "host" and bound_to[1][2] == 0), (index, name)
        for past_name, present_name in zip(past, present):
            if present_name in run.outputs:
                latest[past_name] = run.outputs[present_name]
    return counts

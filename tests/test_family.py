"""The T5 family beyond T5 v1.0/v1.1: mT5, a t5-efficient "DL" shape (more decoder than encoder layers),
LongT5 with local and with transient-global encoder attention, ByT5 (bytes as tokens). Each is a tiny
random checkpoint exported with ortdecode's exporter and compared with transformers on a padded batch:
per-step logits, then identical greedy and beam-4 sequences, then identical strings.

transformers 4.57's cached `generate` is wrong for T5s with more decoder than encoder layers: there the
reference runs uncached (`use_cache=False`, slower, correct for every shape)."""

import numpy as np
import pytest
import torch

import ortdecode
from ortdecode_export import ExportError, export_model
from ortdecode_export.checkpoints import make_random_t5
from ortdecode_export.validate import stepwise_logits

from .conftest import TEXTS, TinyModel

# preset -> validate at export time. The exporter's validation runs transformers' cached generate, which
# fails on the deeper decoder (IndexError inside transformers), so that export is compared here only.
FAMILY = {"tiny-mt5": True, "tiny-efficient-dl": False, "tiny-longt5-local": True, "tiny-longt5-tglobal": True,
          "tiny-byt5": True}


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, default_model_dir) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("family")
    models = {}
    for seed, (preset, validate) in enumerate(FAMILY.items()):
        checkpoint = make_random_t5(root / f"{preset}-checkpoint", preset, seed=seed, tokenizer_dir=default_model_dir)
        export = root / f"{preset}-onnx"
        export_model(str(checkpoint), export, validate=validate, progress=False)
        models[preset] = TinyModel(preset, checkpoint, export)
    return models


@pytest.fixture(scope="module", params=list(FAMILY))
def member(request, family_models):
    """(tiny model, ortdecode generator, torch model, HF tokenizer, padded input tensors) of one family member."""
    tiny = family_models[request.param]
    tokenizer = tiny.hf_tokenizer()
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return tiny, ortdecode.load(tiny.export, provider="cpu"), tiny.torch_model(), tokenizer, encoded


def reference_generate(model, encoded, **options):
    use_cache = model.config.num_decoder_layers <= model.config.num_layers
    with torch.no_grad():
        return model.generate(**encoded, use_cache=use_cache, do_sample=False, **options)


def test_export_records_the_model_type(member):
    tiny, generator, model, _, _ = member
    assert generator.manifest.model_type == model.config.model_type
    expected_multiple = 4 if "longt5" in tiny.preset else 1  # local_radius 3 (+1), global blocks of 4
    assert generator.manifest.encoder_length_multiple == expected_multiple


def test_per_step_logits_match_pytorch(member):
    _, generator, model, _, encoded = member
    ids, mask = encoded["input_ids"].numpy(), encoded["attention_mask"].numpy()
    decoder_input_ids = reference_generate(model, encoded, max_new_tokens=12, min_new_tokens=12)[:, :-1]
    with torch.no_grad():
        expected = model(**encoded, decoder_input_ids=decoder_input_ids).logits.numpy()
    ours = stepwise_logits(generator.runner, ids, mask, decoder_input_ids.numpy())
    assert np.abs(ours - expected).max() <= 1e-4
    single_pass = generator.runner.teacher_forced_logits(ids, mask, decoder_input_ids.numpy())
    assert np.abs(single_pass - expected).max() <= 1e-4


@pytest.mark.parametrize("num_beams", [1, 4])
def test_sequences_and_texts_are_identical(member, num_beams):
    _, generator, model, tokenizer, encoded = member
    expected = reference_generate(model, encoded, max_new_tokens=16, num_beams=num_beams)
    result = generator.generate(TEXTS, max_new_tokens=16, num_beams=num_beams)
    np.testing.assert_array_equal(result.sequences, expected.numpy())
    assert result.texts == tokenizer.batch_decode(expected, skip_special_tokens=True)


def test_inputs_decode_alike_alone_and_in_a_padded_batch(member):
    """Every input length, not only the batch's: LongT5's encoder pads each to whole blocks."""
    generator = member[1]
    batched = generator.generate(TEXTS, max_new_tokens=8)
    for i in (0, 3, 4):
        assert generator.generate(TEXTS[i], max_new_tokens=8).texts[0] == batched.texts[i]


def test_byt5_export_ships_the_byte_tokenizer(family_models):
    generator = ortdecode.load(family_models["tiny-byt5"].export, provider="cpu")
    assert type(generator.tokenizer).__name__ == "ByteTokenizer"
    assert generator.tokenizer.encode_one("é") == [0xC3 + 3, 0xA9 + 3, 1]


def test_umt5_is_refused_naming_its_model_type(tmp_path, default_model_dir):
    from transformers import T5TokenizerFast, UMT5Config, UMT5ForConditionalGeneration

    tokenizer = T5TokenizerFast.from_pretrained(default_model_dir)
    config = UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                        decoder_start_token_id=0)
    UMT5ForConditionalGeneration(config).save_pretrained(tmp_path / "umt5")
    tokenizer.save_pretrained(tmp_path / "umt5")
    with pytest.raises(ExportError, match="'umt5' model, which ortdecode cannot export: Optimum has no ONNX"):
        export_model(str(tmp_path / "umt5"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

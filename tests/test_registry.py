"""tasks/registry.py helpers shared by every task module: the output features and the one
re-registration policy."""

import pytest
import seqio
import tensorflow as tf

from tasks import instructions, registry


def test_output_features_for_documents_and_instructions():
  docs = registry.output_features()
  assert list(docs) == ["targets"] and docs["targets"].add_eos and docs["targets"].dtype == tf.int32
  pairs = registry.output_features(inputs=True)
  assert list(pairs) == ["inputs", "targets"]
  assert not pairs["inputs"].add_eos and pairs["targets"].add_eos
  task = seqio.get_mixture_or_task("polylm_multialpaca_es")
  assert {k: f.add_eos for k, f in task.output_features.items()} == {
    "inputs": False,
    "targets": True,
  }


def test_add_provider_replaces_or_refuses(tmp_path):
  path = tmp_path / "de.txt"
  path.write_text("eins\n", encoding="utf-8")
  name = registry.register_text_task("de", "regtest", str(path))
  first = seqio.get_mixture_or_task(name)
  assert registry.register_text_task("de", "regtest", str(path)) == name
  assert seqio.get_mixture_or_task(name) is not first  # replaced
  with pytest.raises(ValueError, match=f"task '{name}' is already registered"):
    registry.register_text_task("de", "regtest", str(path), replace=False)
  mix = registry.add_provider(seqio.MixtureRegistry, "regtest_mix", [(name, 1.0)])
  assert seqio.get_mixture_or_task("regtest_mix") is mix
  with pytest.raises(ValueError, match="mixture 'regtest_mix' is already registered"):
    registry.add_provider(seqio.MixtureRegistry, "regtest_mix", [(name, 1.0)], replace=False)
  with pytest.raises(ValueError, match="mixture 'polylm_multialpaca' is already registered"):
    instructions.register_instruction_mixture(
      instructions.MIXTURE_NAME, ["polylm_multialpaca_es"], replace=False
    )

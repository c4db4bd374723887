"""polylm_jax/instruct_store.py: crash-safe JSONL, seed files, statistics and plot."""

import pytest

from polylm_jax import instruct_store as store


def test_truncated_last_line_is_cut_and_damage_elsewhere_is_an_error(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
  assert store.repair_jsonl(str(path)) == len('{"c": ')
  assert store.read_jsonl(str(path)) == [{"a": 1}, {"b": 2}]
  path.write_text('{"a": 1}\n{"b": \n')  # complete line, but not JSON: also the last one
  assert store.repair_jsonl(str(path)) == len('{"b": \n')
  path.write_text('{"a": 1}\n{oops}\n{"b": 2}\n')
  assert store.repair_jsonl(str(path)) == 0
  with pytest.raises(ValueError, match=r"x.jsonl line 2: invalid JSON"):
    store.read_jsonl(str(path))


def test_seed_loader_errors_name_file_line_and_field(tmp_path):
  path = tmp_path / "es.jsonl"
  for text, why in [
    ('{"instruction": "a", "output": "b"}\n[1]\n', "line 2: expected a JSON object"),
    ('{"instruction": "", "output": "b"}\n', "field 'instruction' must be"),
    ("\n\n", "holds no seed tasks"),
  ]:
    path.write_text(text)
    with pytest.raises(ValueError, match=why):
      store.load_seed_tasks(str(path))
  with pytest.raises(FileNotFoundError, match="seed file not found"):
    store.load_seed_tasks(str(tmp_path / "missing.jsonl"))
  path.write_text('{"instruction": "a", "input": null, "output": "b", "type": "open_qa"}\n')
  assert store.load_seed_tasks(str(path)) == [
    {"instruction": "a", "input": "", "output": "b", "type": "open_qa"}
  ]


def test_appender_and_atomic_rewrite(tmp_path):
  path = str(tmp_path / "log.jsonl")
  w = store.JsonlAppender(path)
  w.append({"a": "é"})
  w.append({"b": 2})
  w.close()
  assert store.read_jsonl(path) == [{"a": "é"}, {"b": 2}]
  store.rewrite_jsonl(path, [{"c": 3}])
  assert store.read_jsonl(path) == [{"c": 3}]
  assert not (tmp_path / "log.jsonl.tmp").exists()


def test_stats_table_and_plot(tmp_path):
  kept = {"es": [{"rouge_l": 0.2}, {"rouge_l": 0.5}], "ja": []}
  rejected = [
    {"lang": "es", "reason": "rouge", "rouge_l": 0.8},
    {"lang": "ja", "reason": "language", "rouge_l": None},
    {"lang": "ja", "reason": "teacher_error"},
    {"lang": "xx", "reason": "format"},
  ]
  stats = store.compute_stats(kept, rejected, ["es", "ja"])
  assert stats["languages"] == {
    "es": {"kept": 2, "rejected": {"rouge": 1}, "candidates": 3},
    "ja": {"kept": 0, "rejected": {"language": 1, "teacher_error": 1}, "candidates": 1},
  }
  assert stats["rouge_l"] == {"kept": [0.2, 0.5], "rejected": [0.8]}
  text = store.format_stats(stats, threshold=0.7)
  assert "teacher_error" in text.splitlines()[0]
  assert "at or above the threshold 0.7: 1 of 3" in text
  png = store.plot_stats(stats, str(tmp_path / "stats.png"), 0.7)
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

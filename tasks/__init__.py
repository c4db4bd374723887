"""PolyLM SeqIO tasks. Importing this package registers every built-in task.

Look-ups for the stream: `task_info(name)`, `task_language(name)`, `list_tasks(...)`.
"""

from tasks import languages, pretrain, registry, sources  # noqa: F401  (registers tasks)
from tasks import benchmark, instructions, mixtures  # noqa: F401  (registers tasks)
from tasks import text_plans  # noqa: F401  (registers the text fast path)
from tasks.languages import LANGUAGE_CODES, Language, check_language, register_language
from tasks.registry import (
  list_tasks,
  register_bitext_files_task,
  register_bitext_task,
  register_mono_task,
  register_text_task,
  task_info,
  task_language,
  task_languages,
)
from tasks.pretrain import register_language_tasks, register_sample_bitext

__all__ = [
  "LANGUAGE_CODES",
  "Language",
  "check_language",
  "register_language",
  "list_tasks",
  "register_bitext_files_task",
  "register_bitext_task",
  "register_mono_task",
  "register_text_task",
  "task_info",
  "task_language",
  "task_languages",
  "register_language_tasks",
  "register_sample_bitext",
]

"""The one prompt renderer: what text the engine receives for a dataset's prompt.

Training rollouts, evaluation and ``duet data`` all call ``PromptRenderer.render``, so what is
inspected is what is trained on. ``task.template``:

- ``raw``: the problem text, after ``task.system_prompt`` (a paragraph of its own) and before
  ``task.instruction`` (one space between); a chat-message prompt's turns are joined by
  blank lines.
- ``chat``: the model tokenizer's own chat template with the generation prompt, over the
  system prompt (unless the prompt brings its own), the prompt's messages (or one user turn),
  and the instruction appended to the last user turn: verl's and TRL's way.
- a Jinja file: rendered with ``messages`` (as for chat), ``problem``, ``system_prompt``,
  ``instruction``, ``bos_token`` and ``eos_token``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from actors.tasks.base import Prompt


class TemplateError(ValueError):
    """A template that cannot render; names ``task.template`` and what to do."""


class PromptRenderer:
    """Renders prompts for one tokenizer under one ``TaskConfig``."""

    def __init__(self, task, tokenizer) -> None:
        self.task, self.tokenizer = task, tokenizer
        self._jinja = None
        if task.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "task.template=chat: the model's tokenizer has no chat template "
                "(tokenizer_config.json 'chat_template'); use task.template=raw, or a Jinja "
                "file (task.template=path/to/prompt.jinja)")
        if task.template not in ("raw", "chat"):
            self._jinja = _load_jinja(task.template)

    def messages(self, prompt: Prompt) -> List[Dict[str, str]]:
        """The chat turns: system prompt, the prompt's own turns, instruction appended."""
        turns = ([{"role": r, "content": c} for r, c in prompt.messages] if prompt.messages
                 else [{"role": "user", "content": prompt.text}])
        if self.task.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.task.system_prompt})
        if self.task.instruction:
            last = max(i for i, t in enumerate(turns) if t["role"] == "user")
            turns[last] = {**turns[last],
                           "content": f"{turns[last]['content']} {self.task.instruction}"}
        return turns

    def render(self, prompt: Prompt) -> str:
        """The exact text the engine is given (tokenized without added special tokens)."""
        t = self.task
        if t.template == "chat":
            return self.tokenizer.apply_chat_template(self.messages(prompt), tokenize=False,
                                                      add_generation_prompt=True)
        if self._jinja is not None:
            try:
                return self._jinja.render(
                    messages=self.messages(prompt), problem=prompt.text,
                    system_prompt=t.system_prompt, instruction=t.instruction,
                    bos_token=self.tokenizer.bos_token or "",
                    eos_token=self.tokenizer.eos_token or "")
            except Exception as err:  # jinja2 raises UndefinedError, TemplateError, ...
                raise TemplateError(f"task.template={t.template}: rendering prompt "
                                    f"{prompt.prompt_id} failed ({err})") from None
        parts = ([c for _, c in prompt.messages] if prompt.messages else [prompt.text])
        if t.system_prompt and not (prompt.messages and prompt.messages[0][0] == "system"):
            parts.insert(0, t.system_prompt)
        text = "\n\n".join(parts)
        return f"{text} {t.instruction}" if t.instruction else text


def _load_jinja(path: str):
    import jinja2

    file = Path(path).expanduser()
    if not file.is_file():
        raise TemplateError(f"task.template={path}: no such Jinja file; give 'raw', 'chat' "
                            "or the path of a template file")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    try:
        return env.from_string(file.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"{file}:{err.lineno}: task.template is not valid Jinja "
                            f"({err.message})") from None

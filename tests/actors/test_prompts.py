"""The prompt renderer: raw, the tokenizer's chat template, and Jinja files, with clear errors."""

import pytest

from actors.prompts import PromptRenderer, TemplateError
from actors.tasks.base import Prompt
from cluster.contract.config import TaskConfig

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
PROBLEM = Prompt("p0", "What is $12+7$?", "19")


class Tokenizer:
    """A tokenizer's rendering side, as transformers' apply_chat_template does it (Jinja)."""

    bos_token, eos_token = "<s>", "</s>"

    def __init__(self, chat_template=CHATML):
        self.chat_template = chat_template

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        import jinja2

        assert tokenize is False
        return jinja2.Template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt)


def render(prompt=PROBLEM, tokenizer=None, **task):
    return PromptRenderer(TaskConfig(**task), tokenizer or Tokenizer()).render(prompt)


def test_raw_is_the_text_with_system_prompt_and_instruction():
    assert render() == PROBLEM.text
    assert render(instruction=INSTRUCTION) == f"{PROBLEM.text} {INSTRUCTION}"
    assert render(system_prompt="Be brief.", instruction="Go.") == \
        f"Be brief.\n\n{PROBLEM.text} Go."


def test_chat_is_verls_rendering_of_the_paper_prompt():
    """verl's MATH preparation: a user turn of problem + instruction, the chat template with
    the generation prompt; Qwen2.5-Math's own evaluation: its system prompt before it."""
    assert render(template="chat", instruction=INSTRUCTION) == (
        f"<|im_start|>user\n{PROBLEM.text} {INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    system = "Please reason step by step, and put your final answer within \\boxed{}."
    assert render(template="chat", system_prompt=system).startswith(
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{PROBLEM.text}<|im_end|>")


def test_chat_messages_keep_their_own_system_turn_and_take_the_instruction_last():
    prompt = Prompt("p1", "q2", "1", messages=(("system", "S"), ("user", "q1"),
                                                ("assistant", "a1"), ("user", "q2")))
    out = render(prompt, template="chat", system_prompt="ignored", instruction="Go.")
    assert out.count("<|im_start|>system") == 1 and "ignored" not in out
    assert "<|im_start|>user\nq1<|im_end|>" in out and "<|im_start|>user\nq2 Go.<|im_end|>" in out
    assert render(prompt) == "S\n\nq1\n\na1\n\nq2"


def test_a_tokenizer_without_a_chat_template_is_a_clear_error():
    with pytest.raises(TemplateError, match="task.template=chat: the model's tokenizer has no "
                                            "chat template"):
        render(template="chat", tokenizer=Tokenizer(chat_template=None))


def test_a_jinja_file_sees_messages_problem_and_tokens(tmp_path):
    path = tmp_path / "p.jinja"
    path.write_text("{{ bos_token }}Q: {{ problem }}\n{% for m in messages %}[{{ m.role }}] "
                    "{{ m.content }}\n{% endfor %}A:")
    out = render(template=str(path), instruction="Box it.")
    assert out == f"<s>Q: {PROBLEM.text}\n[user] {PROBLEM.text} Box it.\nA:"


def test_bad_jinja_files_name_the_file(tmp_path):
    with pytest.raises(TemplateError, match="no such Jinja file"):
        render(template=str(tmp_path / "missing.jinja"))
    broken = tmp_path / "broken.jinja"
    broken.write_text("line one\n{% for m in messages %}")
    with pytest.raises(TemplateError, match=f"{broken}:2: task.template is not valid Jinja"):
        render(template=str(broken))
    undefined = tmp_path / "undefined.j2"
    undefined.write_text("{{ nothing_here }}")
    with pytest.raises(TemplateError, match="rendering prompt p0 failed"):
        render(template=str(undefined))


def test_the_embedded_tokenizer_carries_a_chat_template():
    from cluster.policy.embedded import build_tokenizer

    tokenizer = build_tokenizer()
    assert render(Prompt("a", "12+7", "19"), tokenizer, template="chat") == "12+7="

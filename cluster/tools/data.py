"""``duet data`` and the start-up data check: the dataset and template as the engine sees them.

``inspect_data`` opens the task's data with the training loader, renders prompts with the
training renderer and counts their tokens with the model's tokenizer: row count, bad rows by
reason, the first training prompt exactly as the engine receives it, and the longest prompt.
``check_lengths`` then holds the run to the model's context: ``model.max_model_len`` within the
model's ``max_position_embeddings`` (vLLM refuses more), and the longest prompt plus
``rollout.max_new_tokens`` within ``model.max_model_len``; each failure names the key to
change. ``duet train`` and ``duet compare`` run both before any actor starts, and store the
first rendered prompt in the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from cluster.contract.config import ConfigError, RunConfig

FIRST_PROMPT = "first_prompt.txt"
# Synthetic tasks have no end: this many of their training prompts stand for the data.
SYNTHETIC_SAMPLE = 1000
# max_position_embeddings of the paper's models (their config.json on the hub), so that a
# dry run checks model.max_model_len before the model is on the machine.
KNOWN_CONTEXT = {"qwen2.5-math-1.5b": 4096, "qwen2.5-math-7b": 4096}


def known_context(model_path: str) -> Optional[int]:
    name = Path(model_path).name.lower()
    for key, positions in KNOWN_CONTEXT.items():
        if name.endswith(key):
            return positions
    return None


@dataclass
class DataReport:
    """What the data looks like to the engine."""

    rows: int
    """Usable rows (training and held out); for a synthetic task, the prompts looked at."""
    skipped: Dict[str, int]
    """Bad rows skipped, by reason (task.skip_bad_rows)."""
    sample: Dict[str, object]
    """The first training prompt: ``prompt`` (rendered), ``prompt_tokens``, ``answer``."""
    max_prompt_tokens: int
    """The longest rendered prompt, in tokens."""
    longest_prompt_id: str
    max_position_embeddings: Optional[int] = None
    """The model's context (its config.json), when known."""
    problems: list = field(default_factory=list)

    def to_json(self) -> Dict[str, object]:
        return {"rows": self.rows, "skipped": self.skipped, "sample": self.sample,
                "max_prompt_tokens": self.max_prompt_tokens,
                "longest_prompt_id": self.longest_prompt_id,
                "max_position_embeddings": self.max_position_embeddings}


def model_files(config: RunConfig, model_folder: Optional[Path] = None):
    """(tokenizer, max_position_embeddings) without loading weights or building anything."""
    from cluster.policy.embedded import EMBEDDED_PREFIX, TINY_MODEL, build_tokenizer

    if model_folder is None and config.model.path.startswith(EMBEDDED_PREFIX):
        return build_tokenizer(), TINY_MODEL.max_position
    from transformers import AutoTokenizer

    from cluster.contract import hub

    if model_folder is None:
        try:
            model_folder = hub.resolve(config.model.path, "model.path")
        except hub.HubError as err:
            raise ConfigError("model.path", str(err)) from None
    folder = Path(model_folder)
    tokenizer = AutoTokenizer.from_pretrained(folder,
                                              trust_remote_code=config.model.trust_remote_code)
    return tokenizer, max_positions(folder)


def max_positions(folder: Path) -> Optional[int]:
    """``max_position_embeddings`` of a model folder's config.json (or its text config)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    c = json.loads(path.read_text())
    value = c.get("max_position_embeddings", (c.get("text_config") or {}).get(
        "max_position_embeddings"))
    return int(value) if value else None


def inspect_data(config: RunConfig, model_folder: Optional[Path] = None) -> DataReport:
    """Open the data and render it as a run would. Raises ``DatasetError`` / ``TemplateError``
    for unusable data or templates, ``ConfigError`` for a model that cannot be found."""
    from actors.prompts import PromptRenderer
    from actors.tasks import make_source

    tokenizer, positions = model_files(config, model_folder)
    renderer = PromptRenderer(config.task, tokenizer)
    source = make_source(config.task, config.seed)
    if config.task.name == "arithmetic":
        prompts = source.eval_set() + [source.train(i) for i in range(SYNTHETIC_SAMPLE)]
    else:
        prompts = source.eval_set() + [source.train(i) for i in range(source.train_size)]

    def count(prompt) -> int:
        return len(tokenizer(renderer.render(prompt), add_special_tokens=False).input_ids)

    lengths = [(count(p), p.prompt_id) for p in prompts]
    longest, longest_id = max(lengths)
    first = source.train(0)
    skipped = {k[len("skipped_"):]: v for k, v in source.stats().items()
               if k.startswith("skipped_")}
    return DataReport(rows=len(prompts), skipped=skipped,
                      sample={"prompt": renderer.render(first), "prompt_tokens": count(first),
                              "answer": first.answer, "prompt_id": first.prompt_id},
                      max_prompt_tokens=longest, longest_prompt_id=longest_id,
                      max_position_embeddings=positions)


def check_lengths(config: RunConfig, report: DataReport) -> None:
    """Raises ``ConfigError`` naming the key to change when the lengths cannot fit."""
    limit, positions = config.model.max_model_len, report.max_position_embeddings
    if positions is not None and limit > positions:
        raise ConfigError("model.max_model_len", f"is above the model's context of {positions} "
                          "tokens (max_position_embeddings in its config.json), which vLLM "
                          f"refuses; set model.max_model_len <= {positions}", value=limit)
    new = config.rollout.max_new_tokens
    longest = report.max_prompt_tokens
    if longest + new > limit:
        raise ConfigError(
            "rollout.max_new_tokens",
            f"the longest prompt ({report.longest_prompt_id}, {longest} tokens with the "
            f"template) plus rollout.max_new_tokens={new} is {longest + new} tokens, more than "
            f"model.max_model_len={limit}; lower rollout.max_new_tokens to <= {limit - longest}"
            + (f", raise model.max_model_len (the model allows {positions})"
               if positions and positions > limit else "")
            + ", or drop long prompts (task.max_prompt_chars with task.skip_bad_rows)",
            value=new)


def summary(config: RunConfig, report: DataReport) -> str:
    """The human form of ``duet data``."""
    lines = [f"data: {config.task.name} {config.task.path or ''}".rstrip(),
             f"  rows             : {report.rows}"
             + (" (synthetic: a sample of the stream)" if config.task.name == "arithmetic"
                else ""),
             "  skipped          : " + (", ".join(f"{k} {v}" for k, v in report.skipped.items())
                                        or "none"),
             f"  template         : {config.task.template}",
             f"  first prompt     : {report.sample['prompt_id']}, "
             f"{report.sample['prompt_tokens']} tokens, answer {report.sample['answer']!r}",
             "  ----- as the engine receives it -----",
             str(report.sample["prompt"]),
             "  -------------------------------------",
             f"  longest prompt   : {report.max_prompt_tokens} tokens ({report.longest_prompt_id})"
             f"; + rollout.max_new_tokens {config.rollout.max_new_tokens} against "
             f"model.max_model_len {config.model.max_model_len}"
             + (f" (model context {report.max_position_embeddings})"
                if report.max_position_embeddings else "")]
    return "\n".join(lines)


def dry_run_check(config: RunConfig) -> str:
    """``duet train --dry-run``'s data check: the full check where the model and data are on
    this machine (raising as ``inspect_data`` / ``check_lengths`` do), else the context check
    alone from a known model's context, saying what was skipped."""
    from cluster.contract import hub
    from cluster.policy.embedded import EMBEDDED_PREFIX

    def here(value: Optional[str], kind: str) -> bool:
        if value is None or value.startswith(EMBEDDED_PREFIX) or Path(value).expanduser().exists():
            return True
        if not hub.is_repo_id(value):
            return False
        try:
            _cached(value, kind)
            return True
        except Exception:  # not in the cache: checked at start instead
            return False

    if here(config.model.path, "model") and here(config.task.path, "dataset"):
        report = inspect_data(config)
        check_lengths(config, report)
        return "data check: ok\n" + summary(config, report)
    positions = known_context(config.model.path)
    context = DataReport(rows=0, skipped={}, sample={}, max_prompt_tokens=0,
                         longest_prompt_id="", max_position_embeddings=positions)
    check_lengths(config, context)
    return ("data check: the model or the data is not on this machine; prompt lengths are "
            "checked at start (duet data on a machine that has them checks them now)"
            + (f"; model.max_model_len {config.model.max_model_len} fits the model's "
               f"{positions}-token context" if positions else ""))


def _cached(repo_id: str, kind: str) -> None:
    """Raises unless ``repo_id`` is in the local hub cache (no network)."""
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id, repo_type=kind, local_files_only=True)


def preflight(config: RunConfig, model_folder: Path, run_dir: Path, say=print) -> DataReport:
    """The start-up check of ``duet train`` / ``duet compare``: inspect, check lengths, store
    and log the first rendered prompt. Raises before any actor starts."""
    from cluster.contract.files import atomic_write_text

    report = inspect_data(config, model_folder)
    check_lengths(config, report)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / FIRST_PROMPT, str(report.sample["prompt"]))
    say(f"first training prompt ({report.sample['prompt_tokens']} tokens, "
        f"stored in {run_dir / FIRST_PROMPT}):\n{report.sample['prompt']}")
    return report


def report_json(report: DataReport) -> str:
    return json.dumps(report.to_json(), ensure_ascii=False)


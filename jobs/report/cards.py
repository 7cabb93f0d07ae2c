"""Hugging Face cards for what an iteration publishes: `iter_k/model/README.md` (how the model was made and what it
scored, with intervals) and `iter_k/pairs/_README.md` (the synthetic preference data it trained on). Both carry YAML
card data, so the Hub and `huggingface_hub.ModelCard.load` read them as any other checkpoint's card. The pairs' card
starts with `_` because Parquet readers (pyarrow, pandas) skip such files when reading a folder, and would fail on
a README.md; uploaded as a dataset, it is renamed README.md."""

from __future__ import annotations

import hashlib
from importlib import metadata

import pyarrow as pa
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from jobs.config import SpinConfig
from jobs.metrics import IterationMetrics
from jobs.report.comparisons import Comparison
from jobs.report.results import comparisons, load_run
from jobs.storage import RunStorage

PAPER = "arxiv:2401.01335"  # Chen et al. 2024, Self-Play Fine-Tuning Converts Weak Language Models to Strong ones
TAGS = ["spin", "self-play", "dpo", "text-generation"]
LIBRARIES = ("torch", "transformers", "vllm", "ray")
FINGERPRINTED = ["prompt_id", "real", "generated"]  # the text of the pairs; their token ids follow from it


def versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def pairs_fingerprint(pairs: pa.Table) -> str:
    """A digest of the pairs' prompts and both answers, in prompt order: equal pairs, equal fingerprint."""
    rows = sorted(zip(*(pairs.column(c).to_pylist() for c in FINGERPRINTED), strict=True))
    return "sha256-" + hashlib.sha256(repr(rows).encode()).hexdigest()[:32]


def model_card(cfg: SpinConfig, metrics: IterationMetrics, fingerprint: str, compared: list[Comparison]) -> ModelCard:
    k, train, t = metrics.iteration, metrics.train, metrics.settings.train
    data = ModelCardData(base_model=metrics.model_in, library_name="transformers", tags=TAGS + [PAPER])
    final = train.final
    lines = [
        f"# {cfg.name}: SPIN iteration {k}",
        "",
        f"`{metrics.model_in}` after iteration {k} of SPIN (self-play fine-tuning, {PAPER}): the model answered the "
        "SFT prompts itself and learned to prefer the human answers over its own, its weights before the iteration "
        "being the frozen reference.",
        "",
        "## Training",
        "",
        "| loss | β | learning rate | pairs | from iterations | steps | final loss | selected step |",
        "|---|---|---|---|---|---|---|---|",
        f"| {t.loss_type} | {t.beta} | {t.learning_rate} | {train.pairs} | {train.pairs_from_iterations} "
        f"| {train.steps} | {final.loss if final else 'n/a'} | {train.selected.step if train.selected else 'n/a'} |",
        "",
        f"Training data: `iter_{k}/pairs/` (its own card), fingerprint `{fingerprint}`; run settings fingerprint "
        f"`{cfg.fingerprint()}`.",
        "",
        "## Evaluation",
        "",
    ]
    e = metrics.evaluation
    if e is None or e.test is None:
        lines.append("Not evaluated: the run holds out no test prompts (`data.test_prompts` is 0).")
    else:
        lines.append(
            f"Test split, {e.test.prompts} prompts none of its training saw (the validation split made every choice): "
            f"task metric {'n/a' if e.test.task_metric is None else f'{e.test.task_metric:.4f}'}, "
            f"real answers' NLL {e.test.nll:.4f} per token."
        )
        lines += ["", "Paired comparisons (95% paired bootstrap interval, exact McNemar p):", ""]
        mine = [c for c in compared if c.model == f"SPIN iteration {k}"]
        lines += [f"- {c.line()}" for c in mine] or ["- no baseline evaluated on the same prompts"]
    lines += ["", "## Config", "", "```yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).strip()]
    lines += ["```", "", "## Versions", ""]
    lines += [f"- {name} {version}" for name, version in versions().items()]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def pairs_card(cfg: SpinConfig, metrics: IterationMetrics, fingerprint: str) -> DatasetCard:
    k, g = metrics.iteration, metrics.generate
    data = DatasetCardData(
        tags=TAGS + ["synthetic"], task_categories=["text-generation"], pretty_name=f"{cfg.name} pairs"
    )
    lines = [
        f"# {cfg.name}: SPIN pairs of iteration {k}",
        "",
        f"Each row pairs an SFT prompt's real (human) answer with an answer `{metrics.model_in}` generated "
        f"({cfg.pairs.samples_per_prompt} sample(s) a prompt, the generated side chosen by rule `{cfg.pairs.rule}`), "
        "and both answers' log-probs under that model (the reference).",
        "",
        f"- pairs: {metrics.score.rows} from {g.prompts} prompts ({g.unique_prompts} unique, {g.skipped_prompts} "
        f"skipped, {g.identical_pairs} whose generated answer equals the real one)",
        f"- sampling: temperature {cfg.sampling.temperature}, top-p {cfg.sampling.top_p}, "
        f"at most {cfg.sampling.max_new_tokens} new tokens",
        f"- fingerprint: `{fingerprint}`",
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_cards(cfg: SpinConfig, k: int) -> None:
    """The cards of iteration k's model and pairs, from what its metrics.json and evaluation recorded."""
    storage, record = RunStorage(cfg.storage_uri), load_run(cfg.storage_uri)
    metrics = record.iterations[k]
    fingerprint = pairs_fingerprint(storage.read_table(storage.pairs(k), FINGERPRINTED))
    compared = comparisons(record)
    storage.write_text(f"{storage.model(k)}/README.md", str(model_card(cfg, metrics, fingerprint, compared)))
    storage.write_text(pairs_card_path(storage, k), str(pairs_card(cfg, metrics, fingerprint)))


def pairs_card_path(storage: RunStorage, k: int) -> str:
    return f"{storage.pairs(k)}/_README.md"

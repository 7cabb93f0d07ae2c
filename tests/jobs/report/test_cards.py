"""Cards of a published iteration: Hugging Face's own parser reads their metadata back."""

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, ModelCard

from jobs.config import SpinConfig
from jobs.report.cards import pairs_card_path, pairs_fingerprint, write_cards
from jobs.storage import RunStorage
from tests.factories import tiny_run_config


def pairs(n: int, generated: str = "wrong") -> pa.Table:
    ids = [f"p{i}" for i in range(n)]
    return pa.table({"prompt_id": ids, "real": ["right"] * n, "generated": [generated] * n})


def test_the_model_and_pairs_cards_parse_with_their_metadata(stored_run):
    cfg = SpinConfig.model_validate(tiny_run_config("r", str(stored_run), "/tmp/m", "/tmp/d.jsonl"))
    storage = RunStorage(str(stored_run))
    storage.write_table(storage.pairs(0), pairs(4))
    storage.write_text(f"{storage.model(0)}/config.json", "{}")

    write_cards(cfg, 0)

    card = ModelCard.load(f"{storage.model(0)}/README.md")
    assert card.data.base_model == "/tmp/m" and card.data.library_name == "transformers"
    assert {"spin", "self-play", "arxiv:2401.01335"} <= set(card.data.tags)
    # SFT 11/20 right, iteration 0 13/20: the comparison and its interval are on the card.
    assert "SPIN iteration 0 vs SFT, exact match on 20 test prompts: 0.6500 vs 0.5500, +10.00 points" in card.text
    assert pairs_fingerprint(pairs(4)) in card.text and "transformers" in card.text.split("## Versions")[1]
    dataset = DatasetCard.load(pairs_card_path(storage, 0))
    assert "synthetic" in dataset.data.tags and dataset.data.task_categories == ["text-generation"]
    # The card is not read as a part of the table, by the run's storage or by pyarrow reading the folder.
    assert storage.read_table(storage.pairs(0)).num_rows == pq.read_table(storage.pairs(0)).num_rows == 4


def test_the_fingerprint_follows_the_pairs_not_their_order():
    assert pairs_fingerprint(pairs(3)) == pairs_fingerprint(pairs(3).take([2, 0, 1]))
    assert pairs_fingerprint(pairs(3)) != pairs_fingerprint(pairs(3, generated="other"))

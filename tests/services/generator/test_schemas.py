"""What the generator's responses promise, checked without an engine."""

import pytest

from services.generator.schemas import Completion, GenerateResponse, openai_model_ids


def response(version, *labels):
    completions = [Completion(text="4", token_ids=[7], finish_reason="stop", weight_versions=list(w)) for w in labels]
    return GenerateResponse(completions=completions, model_version=version)


def test_a_response_is_the_versions_only_when_every_completion_was_sampled_by_it():
    assert response(2, ["2"], ["2"]).produced_by(2)
    assert not response(2, ["2"], ["2"]).produced_by(1)  # the replica's word
    assert not response(2, ["2"], ["1"]).produced_by(2)  # a completion from older weights
    assert not response(2, ["2"], ["1", "2"]).produced_by(2)  # a move cut through one completion
    assert not response(2, ["2"], []).produced_by(2)  # no label: no proof
    assert response(2, ["2"], ["1", "2"]).sampled_with() == ["1", "2"]


@pytest.mark.parametrize(
    ("version", "ids"),
    [(0, ["run:sft", "run"]), (1, ["run:iter0", "run"]), (3, ["run:iter2", "run"]), (-1, ["run:baseline", "run"])],
)
def test_model_ids_name_the_iteration_that_made_the_model(version, ids):
    assert openai_model_ids("run", version) == ids


def test_the_runs_best_model_is_also_named_best():
    assert openai_model_ids("run", 2, best=True) == ["run:iter1", "run:best", "run"]
    assert openai_model_ids("run", 0, best=True) == ["run:sft", "run:best", "run"]

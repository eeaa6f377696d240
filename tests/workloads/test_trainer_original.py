"""The trainer with the original project's params (substratusai/runbooks' falcon-7b-instruct
and llama2-7b examples): num_train_epochs, save_steps, prompt_template over the
k8s-instructions rows' {prompt} and {completion}."""

from __future__ import annotations

from pathlib import Path

import pytest

from substratus.workloads.contract import ParamError, Params
from substratus.workloads.training import inputs
from substratus.workloads.training.config import load_config
from tests.workloads.test_trainer import jsonl, layout, run_trainer, tiny_model  # noqa: F401

# As the original's finetuned-model-custom-prompt.yaml writes it (a YAML block: trailing \n).
PROMPT_TEMPLATE = (
    "You're a helpful assistant that helps with generating K8s YAML manifests. Your responses "
    "should only be YAML or multi YAML files\n"
    "## Instruction\n{prompt}\n## Response:\n{completion}\n"
)
# Rows shaped like the k8s-instructions dataset (JSONL with prompt and completion).
K8S_ROWS = [
    {
        "prompt": "Create a Service named web on port 80",
        "completion": "apiVersion: v1\nkind: Service\nmetadata:\n  name: web",
    },
    {
        "prompt": "Create a Namespace named team-a",
        "completion": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a",
    },
    {
        "prompt": "Create a ConfigMap named cfg",
        "completion": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg",
    },
]


def test_original_example_params_are_understood() -> None:
    config = load_config(
        Params({"num_train_epochs": 1, "save_steps": 5, "prompt_template": PROMPT_TEMPLATE})
    )
    assert (config.epochs, config.save_steps, config.prompt_template) == (
        1.0,
        5,
        PROMPT_TEMPLATE,
    )
    # As PARAM_* env values arrive: strings.
    config = load_config(Params({"num_train_epochs": "2", "per_device_train_batch_size": "8"}))
    assert (config.epochs, config.batch_size) == (2.0, 8)


def test_prompt_and_completion_are_row_fields() -> None:
    config = load_config(Params({"prompt_template": PROMPT_TEMPLATE}))
    rows = [inputs.Row(f"data.jsonl line {n}", r) for n, r in enumerate(K8S_ROWS, start=1)]
    plan = inputs.TextPlan("template", "params.prompt_template")
    texts = inputs.render_texts(rows, plan, config)
    assert texts.texts[0] == (
        "You're a helpful assistant that helps with generating K8s YAML manifests. Your "
        "responses should only be YAML or multi YAML files\n## Instruction\nCreate a Service "
        "named web on port 80\n## Response:\napiVersion: v1\nkind: Service\nmetadata:\n"
        "  name: web\n"
    )
    assert len(texts.texts) == 3 and texts.spans is None  # the whole text is learned


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (
            {"num_train_epochs": 1, "epochs": 3},
            ["params.num_train_epochs and params.epochs", "1", "3", "set one of them"],
        ),
        (
            {"per_device_train_batch_size": 2, "batch_size": 4},
            ["params.per_device_train_batch_size and params.batch_size"],
        ),
        ({"num_train_epochs": "many"}, ["params.epochs: 'many' is not a number"]),
        (
            {"lr_scheduler_type": "cosine"},
            ["params.lr_scheduler_type", "TrainingArguments", "does not take", "num_train_epochs"],
        ),
        ({"weight_decay": 0.01}, ["params.weight_decay", "does not take"]),
    ],
)
def test_original_params_refused_with_the_reason(
    params: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ParamError) as info:
        load_config(Params(params))
    for word in words:
        assert word in str(info.value)


def test_same_value_under_both_names_is_fine() -> None:
    assert load_config(Params({"num_train_epochs": 2, "epochs": "2"})).epochs == 2.0


def test_trains_with_the_original_example_params(tmp_path: Path, tiny_model: Path) -> None:  # noqa: F811
    root = layout(
        tmp_path / "run",
        tiny_model,
        {
            "num_train_epochs": 1,
            "save_steps": 1,
            "keep_checkpoints": True,
            "batch_size": 1,
            "prompt_template": PROMPT_TEMPLATE,
        },
        {"k8s-instructions.jsonl": jsonl(K8S_ROWS)},
    )
    run = run_trainer(root, timeout=300).check()
    metrics = run.metrics()
    assert metrics["params"]["epochs"] == 1.0 and metrics["params"]["save_steps"] == 1
    assert metrics["data"]["texts"] == 3 and "prompt_template" in metrics["data"]["text_from"]
    # One epoch of three rows, one row a step, a checkpoint every step (save_steps: 1).
    saved = [line for line in (run.out + run.err).splitlines() if "checkpoint saved" in line]
    assert [line.rsplit("-", 1)[-1] for line in saved] == ["1", "2", "3"], saved

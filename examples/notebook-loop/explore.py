"""Run in the notebook (`%run explore.py`): the mounted model answers a question of the data."""

import json
from pathlib import Path

from transformers import pipeline

row = json.loads(Path("data/data.jsonl").read_text().splitlines()[0])
chat = pipeline("text-generation", model="model")
question = [{"role": "user", "content": row["question"]}]
print(chat(question, max_new_tokens=64)[0]["generated_text"][-1]["content"])

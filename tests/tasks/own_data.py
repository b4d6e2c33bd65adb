"""A user's own data for the task tests: JSONL and CSV files made from the bundled fixtures under other column names
and label names (sst2 -> reviews: review / sentiment negative|positive; stsb -> scores: first, second, score), and a
small study that names them."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import yaml

from lorascope import data

REPO = Path(__file__).resolve().parents[2]
SMOKE = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
SENTIMENT = ("negative", "positive")


def write_reviews_jsonl(folder: Path, n_train: int | None = None, n_val: int | None = None) -> dict[str, str]:
    """sst2's fixtures as JSON lines with columns `review`, `sentiment` (names), `id`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_val)):
        rows = data.read_jsonl(data.FIXTURES / "sst2" / f"{split}.jsonl")[:n]
        path = folder / f"reviews-{split}.jsonl"
        path.write_text("".join(json.dumps({"id": r["idx"], "review": r["sentence"], "sentiment": SENTIMENT[r["label"]]}) + "\n"
                                for r in rows))  # fmt: skip
        files[split] = str(path)
    return files


def write_scores_csv(folder: Path, n_train: int | None = None, n_val: int | None = None) -> dict[str, str]:
    """stsb's fixtures as CSV with columns `first`, `second`, `score` (0 to 5) and no id column."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_val)):
        rows = data.read_jsonl(data.FIXTURES / "stsb" / f"{split}.jsonl")[:n]
        path = folder / f"scores-{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["first", "second", "score"])
            w.writerows([r["sentence1"], r["sentence2"], r["label"]] for r in rows)
        files[split] = str(path)
    return files


def reviews_task(files: dict[str, str], **extra) -> dict:
    return {"name": "reviews", "source": {"files": files}, "columns": {"text": "review", "label": "sentiment", "idx": "id"},
            "labels": list(SENTIMENT), "max_length": 64, **extra}  # fmt: skip


def scores_task(files: dict[str, str], **extra) -> dict:
    return {"name": "scores", "source": {"files": files}, "columns": {"text": "first", "text_pair": "second", "label": "score"},
            "labels": "regression", "max_length": 64, **extra}  # fmt: skip


def small_study(tasks: list[dict], name: str = "own-data", seeds=(42, 1337)) -> dict:
    """The smoke study's settings on `tasks`, full and LoRA, HPO off, two seeds, a short schedule, hf bench off."""
    raw = copy.deepcopy(SMOKE)
    raw.update(name=name, tasks=tasks, seeds=list(seeds))
    raw["hpo"] = {"enabled": False}
    raw["training"]["defaults"] = {
        "full": {"learning_rate": 2.0e-3, "warmup_ratio": 0.1, "weight_decay": 0.0, "effective_batch": 16, "epochs": 3},
        "lora": {"learning_rate": 1.0e-2, "warmup_ratio": 0.1, "weight_decay": 0.0, "effective_batch": 16, "epochs": 3},
    }
    raw["extraction"] = {"examples": 64, "batch_size": 32, "pooling": ["mean", "last"]}
    raw["bench"] = {"backends": ["hf"], "modes": ["merged", "separate"], "batch_sizes": [4], "warmup_batches": 1,
                    "requests": 8, "repeats": 2, "seed": seeds[0], "dtype": "float32"}  # fmt: skip
    raw["sanity"] = {"examples": 8, "max_steps": 150, "target_loss": 0.1, "learning_rate": {"full": 3.0e-3, "lora": 1.0e-2}}
    return raw

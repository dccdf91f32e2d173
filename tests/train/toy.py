"""A toy task for loop tests: a 2-layer MLP on a fixed synthetic 3-class problem (no tokenizer, no files)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from toolkit.config import recipe_from_dict
from toolkit.tasks.base import Prepared


class ToyNet(torch.nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.norm = torch.nn.LayerNorm(hidden)
        self.drop = torch.nn.Dropout(dropout)
        self.fc2 = torch.nn.Linear(hidden, classes)
        self.nan_calls: set[int] = set()  # training forward calls (1-based) whose loss is made NaN
        self.calls = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        logits = self.fc2(self.drop(torch.relu(self.norm(self.fc1(x)))))  # (B, classes)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        if self.training:
            self.calls += 1
            if self.calls in self.nan_calls:
                loss = loss * float("nan")
        return SimpleNamespace(loss=loss, logits=logits)


def toy_data(n: int = 96, dim: int = 16, seed: int = 123) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 3, generator=g)
    y = (x @ w).argmax(1)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack([i["x"] for i in items]), "labels": torch.stack([i["labels"] for i in items])}


class ToyTask:
    name = "toy"

    def evaluate(self, model, prepared, dataset, batch_size, device):
        model.eval()
        with torch.inference_mode():
            b = collate(list(dataset))
            out = model(**b)
            acc = (out.logits.argmax(1) == b["labels"]).float().mean().item()
        return {"loss": out.loss.item(), "accuracy": acc}

    def load(self, model_dir: Path):
        raise NotImplementedError("the toy task is never loaded from disk")


def toy_prepared(seed: int = 0, dropout: float = 0.1) -> Prepared:
    torch.manual_seed(seed)
    data = toy_data()
    return Prepared(model=ToyNet(dropout=dropout), train_set=data[:64], val_set=data[64:80], eval_set=data[80:],
                    collate=collate, primary_metric="accuracy", higher_is_better=True,
                    save=lambda m, d: torch.save(m.state_dict(), Path(d) / "model.pt"))


def toy_recipe(**train) -> "Recipe":  # noqa: F821
    base = {"lr": 1e-2, "batch_size": 8, "max_steps": 20, "warmup": 2, "log_every": 1, "checkpoint_every": 5,
            "deterministic": True, "dropout": 0.1, "weight_decay": 0.01, "clip": 1.0}
    base.update(train)
    return recipe_from_dict({"name": "toy", "task": "text-classification", "seed": 0, "train": base}, "toy.toml")

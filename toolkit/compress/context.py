"""What a compression handler may use besides its step and parent: the recipe, the run, events, the data.

A handler turns its parent ``Variant`` into a new one, writing into ``ctx.variant_dir(step.name)``:

    @handler(PruneConfig)
    def prune(step: PruneConfig, parent: Variant, ctx: Context) -> Variant: ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.config import Recipe
from toolkit.variants import Variant, load_variants


@dataclass
class Context:
    """The compression stage's state, shared by its steps."""

    recipe: Recipe
    run: Any
    """the RunDir"""
    emit: Any
    """a StageEmitter for stage 'compress'"""
    cache: dict[str, Any] = field(default_factory=dict)

    def variant_dir(self, name: str) -> Path:
        return self.run.variant(name)

    @property
    def task(self) -> Any:
        from toolkit.tasks import get_task

        return get_task(self.recipe.task)

    @property
    def where(self) -> str:
        """The recipe file, for messages."""
        return self.recipe.source_path or "recipe"

    def step_where(self, step: Any) -> str:
        """'<recipe>: [[compress]] '<name>' (<method>)' for a step's messages."""
        return f"{self.where}: [[compress]] '{step.name}' ({type(step).method_name})"

    def variants(self) -> dict[str, Variant]:
        """Every variant of the run so far (the stage keeps them here as it makes them; else read from disk)."""
        if "variants" not in self.cache:
            self.cache["variants"] = load_variants(self.run.variants)
        return self.cache["variants"]

    def splits(self) -> Any:
        """The run's data splits (loaded once)."""
        if "splits" not in self.cache:
            from toolkit.data import load_splits

            self.cache["splits"] = load_splits(self.recipe)
        return self.cache["splits"]

    def prepare(self, model_dir: Path) -> Any:
        """The task's Prepared for a saved model folder: the model loaded, the splits encoded with its tokenizer."""
        from toolkit.tasks import prepare_folder

        return prepare_folder(self.recipe, self.splits(), model_dir, self.run.train)

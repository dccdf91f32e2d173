"""Request bodies, validated by FastAPI (pydantic): a wrong type or a missing key is a 422 naming the field."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not silently ignored


class PredictRequest(_Strict):
    """Classification: texts, or images as base64 PNG/JPEG (optionally as ``data:image/png;base64,...`` URLs)."""

    inputs: list[str] = Field(min_length=1, description="texts, or base64-encoded images")


class _Sampling(_Strict):
    max_new_tokens: int = Field(32, ge=1, le=4096, description="tokens to generate at most")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0: greedy (eval's decoding); > 0: sampling")
    top_k: int | None = Field(None, ge=1, description="sample from the k likeliest tokens only")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus sampling: the smallest set with this mass")
    seed: int | None = Field(None, description="seed of the sampler (the same seed gives the same text)")
    stream: bool = Field(False, description="server-sent events, one per token, then one with done: true")


class GenerateRequest(_Sampling):
    """Language models: continue ``prompt``."""

    prompt: str = Field(min_length=1, description="the text to continue")


class TranslateRequest(_Sampling):
    """Seq2seq: one output per input text."""

    inputs: list[str] = Field(min_length=1, description="source texts")

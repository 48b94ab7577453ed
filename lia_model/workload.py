"""The workload: batch size, prompt length and generated length."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lia_model.errors import LiaInputError
from lia_model.models import ModelSpec
from lia_model.precision import BF16, Precision

MAX_BATCH = 1 << 20  # sequences: far past any memory; a larger number is a typo
MAX_TOKENS = 1 << 20  # per sequence, prompt or output: past every model's context limit


class Workload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch: int = Field(ge=1, description="Sequences processed together (B).")
    input_len: int = Field(ge=1, description="Prompt tokens per sequence (L_in).")
    output_len: int = Field(ge=1, description="Generated tokens per sequence (L_out), the first from prefill.")
    precision: Precision = Field(
        BF16,
        description="How weights and KV cache are stored (lia_model.precision); given, never chosen by the optimiser.",
    )

    @property
    def decode_steps(self) -> int:
        """Decode steps after prefill: the first output token comes from prefill."""
        return self.output_len - 1

    def decode_contexts(self) -> list[int]:
        """Cached tokens s at each decode step t = 1 .. L_out - 1 (the new token included): L_in + t."""
        return [self.input_len + t for t in range(1, self.output_len)]


def make_workload(
    batch: int, input_len: int, output_len: int, model: ModelSpec | None = None, precision: Precision | None = None
) -> Workload:
    """Validate a workload with clear messages (and against the model's context limit when given). The precision
    defaults to the model's checkpoint precision (its quantization_config), else bf16."""
    for field, value, example, largest in (
        ("batch", batch, 1, MAX_BATCH),
        ("input_len", input_len, 256, MAX_TOKENS),
        ("output_len", output_len, 32, MAX_TOKENS),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value > largest:
            raise LiaInputError(
                f"workload.{field}",
                f"must be a whole number from 1 to {largest}, got {value!r}",
                f"e.g. --{field.replace('_len', '')} {example}",
            )
    if model is not None and input_len >= model.max_context:
        raise LiaInputError(
            "workload.input_len",
            f"an input of {input_len} tokens leaves no room for output in {model.name}'s "
            f"context limit of {model.max_context}",
            f"use an input of at most {model.max_context - output_len if output_len < model.max_context else 1} "
            f"tokens (input + output <= {model.max_context})",
        )
    if model is not None and input_len + output_len > model.max_context:
        raise LiaInputError(
            "workload.output_len",
            f"input {input_len} + output {output_len} = {input_len + output_len} tokens passes "
            f"{model.name}'s context limit of {model.max_context}",
            f"use an output of at most {max(model.max_context - input_len, 0)} tokens, or a shorter input",
        )
    if precision is None:
        precision = model.checkpoint_precision if model is not None and model.checkpoint_precision else BF16
    return Workload(batch=batch, input_len=input_len, output_len=output_len, precision=precision)

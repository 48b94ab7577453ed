"""One error type for bad input: it names the field or resource and says what would fix it."""

from __future__ import annotations


class LiaInputError(ValueError):
    """Bad user input. ``str(err)`` is a complete one-paragraph message meant for the terminal.

    field: the dotted field or resource at fault (``gpu.hbm_gbps``, ``workload.batch``)
    problem: what is wrong with it
    fix: what would make it right, ideally with a valid example
    """

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f" -- {fix}"
        super().__init__(message)


def from_validation_error(err: "object", where: str, model_cls: "type | None" = None) -> LiaInputError:
    """Turn a pydantic ValidationError into one LiaInputError about its first problem.

    where: what was being validated (a file name, "--set", ...). The message names the dotted field,
    says what is wrong, and gives a valid example (from the field's ``examples`` when it has one).
    """
    import difflib

    errors = err.errors()  # type: ignore[attr-defined]
    # A misspelt field shows up as one unknown and one missing field: the unknown one says more.
    errors = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    field = ".".join(loc) if loc else "(top level)"
    kind = first.get("type", "")
    got = first.get("input")
    owner, leaf_info = _resolve_field(model_cls, loc)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if kind == "extra_forbidden":
        valid = sorted(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(loc[-1], valid, n=1) if valid else []
        hint = f"did you mean '{close[0]}'? " if close else ""
        return LiaInputError(f"{where}: {field}", f"unknown field{more}",
                             f"{hint}valid fields here: {', '.join(valid)}" if valid else hint)
    if kind == "missing":
        example = _example(leaf_info, loc[-1] if loc else "")
        return LiaInputError(f"{where}: {field}", f"required field is missing{more}", f"add it, e.g. {example}")
    msg = first.get("msg", "invalid value")
    example = _example(leaf_info, loc[-1] if loc else "")
    got_text = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    return LiaInputError(f"{where}: {field}", f"{msg}{got_text}{more}", f"e.g. {example}" if example else "")


def _resolve_field(model_cls: "type | None", loc: list[str]) -> "tuple[type | None, object]":
    """Walk the model classes along loc; return (class owning the last field, that field's info)."""
    import typing

    cls = model_cls
    info = None
    owner = None
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if fields is None:
            # a dict or list level: keep the value type
            continue
        owner = cls
        info = fields.get(part)
        if info is None:
            return owner, None
        ann = info.annotation
        nxt = None
        for cand in (ann, *typing.get_args(ann)):
            if hasattr(cand, "model_fields"):
                nxt = cand
                break
            for inner in typing.get_args(cand):
                if hasattr(inner, "model_fields"):
                    nxt = inner
        cls = nxt
    return owner, info


def _example(info: object, name: str) -> str:
    examples = getattr(info, "examples", None)
    if examples:
        return f"{name}: {examples[0]}"
    return ""

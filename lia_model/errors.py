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

    def __reduce__(self):
        """Rebuilt from its three parts, so it crosses a process pool (a study's workers) as itself."""
        return (type(self), (self.field, self.problem, self.fix))


def from_validation_error(err: "object", where: str, model_cls: "type | None" = None) -> LiaInputError:
    """Turn a pydantic ValidationError into one LiaInputError that lists every problem.

    where: what was being validated (a file name, "--set", ...). Each problem names the dotted field, says
    what is wrong and gives a valid example (from the field's ``examples`` when it has one). One problem
    reads as one line; several read as a count on the first line, then one indented line each.
    """
    errors = err.errors()  # type: ignore[attr-defined]
    # A misspelt field shows up as one unknown and one missing field: the unknown one comes first.
    errors = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")
    problems = [_problem(e, model_cls) for e in errors]
    if len(problems) == 1:
        field, problem, fix = problems[0]
        return LiaInputError(f"{where}: {field}" if field else where, problem, fix)
    lines = [
        (f"{field}: " if field else "") + problem + (f" -- {fix}" if fix else "") for field, problem, fix in problems
    ]
    return LiaInputError(where, f"{len(problems)} problems:\n  " + "\n  ".join(lines))


def _problem(error: dict, model_cls: "type | None") -> "tuple[str, str, str]":
    """(dotted field, what is wrong, how to fix it) for one pydantic error."""
    import difflib

    loc = [str(p) for p in error.get("loc", ())]
    field = ".".join(loc)  # empty: the object as a whole (a check across its fields)
    kind = error.get("type", "")
    got = error.get("input")
    owner, leaf_info = _resolve_field(model_cls, loc)
    if kind == "extra_forbidden":
        valid = sorted(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(loc[-1], valid, n=1) if valid else []
        hint = f"did you mean '{close[0]}'? " if close else ""
        return field, "unknown field", f"{hint}valid fields here: {', '.join(valid)}" if valid else hint
    example = _example(leaf_info, loc[-1] if loc else "")
    if kind == "missing":
        return field, "required field is missing", f"add it, e.g. {example}" if example else "add it"
    msg = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    got_text = f" (got {_short(got)})" if got is not None and not isinstance(got, (dict, list)) else ""
    return field, f"{msg}{got_text}", f"e.g. {example}" if example else ""


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

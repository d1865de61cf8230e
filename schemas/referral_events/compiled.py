"""The inbound models compiled to msgspec decoders: the same contract, checked in one pass.

Nothing here restates a field. :func:`compile_model` reads a pydantic model and
builds a msgspec ``Struct`` with the same fields, types and defaults, the
constraints msgspec checks natively (lengths, bounds, patterns, literals, strict
integers and booleans), and the model's own Python validators (the same
functions) run on the decoded values. A consumer validates every message with it
and builds no pydantic model on its way.

The compiled decoder may only be *stricter* than the model, never more lenient:
whatever it refuses (:class:`Refused`) is handed to the model, which decides, and
says why when it refuses too. A property test holds the two to the same verdicts
and the same values. A model feature this compiler does not know (a new kind of
validator, a coercing constraint) stops the compilation with ``TypeError`` rather
than being skipped.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Union

import annotated_types
import msgspec
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, StringConstraints
from pydantic.fields import FieldInfo
from pydantic.types import Strict

from referral_events.envelope import rfc3339

__all__ = ["CompiledModel", "Refused", "compile_model"]


class Refused(ValueError):
    """The compiled decoder does not accept the document; the model must decide."""


#: Before-validators that only refuse input which msgspec's own decoding of the field's
#: type never takes either; :func:`_business_time` runs them on the text all the same.
_TIME_BEFORE_VALIDATORS = frozenset({rfc3339})

#: The business times read here, which ``datetime.fromisoformat`` reads as the model does: every
#: field in range and at most microseconds. Any other form (one ``fromisoformat`` would read
#: more leniently, such as an offset of ``+00:60``, or more digits, which the model cuts) is
#: the model's to read.
_PLAIN_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)

Check = Callable[[Any], Any]


def _business_time(befores: Sequence[Check]) -> Check:
    """Text -> aware datetime, through the model's own before-validators."""

    def parse(text: Any) -> datetime:
        for before in befores:
            text = before(text)
        if not isinstance(text, str) or not _PLAIN_TIME.fullmatch(text):
            raise Refused("a business time the model must read")
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            raise Refused("a business time without an offset")
        return value

    return parse


@dataclass(frozen=True)
class _FieldChecks:
    name: str
    #: Run in order on a value that is not ``None``; each returns the value to keep.
    checks: tuple[Check, ...] = ()
    #: The compiled model of a nested model field.
    nested: CompiledModel | None = None


def _python_regex(pattern: str) -> str:
    """A pydantic pattern (Rust ``regex``: ``$`` is the very end) for msgspec (Python ``re``,
    searched: ``$`` also matches before a final newline)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return pattern


def _value_only(func: Callable[..., Any]) -> Check:
    """A validator that takes the value alone (one that also reads ``ValidationInfo`` does
    not compile)."""
    if len(inspect.signature(func).parameters) != 1:
        raise TypeError(f"validator {func.__name__} takes more than the value: does not compile")
    return func


def _translate(annotation: Any, metadata: Sequence[Any]) -> tuple[Any, list[Check], Any]:
    """(msgspec type, checks, nested model) of one field type with its metadata."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return _translate(inner, [*extra, *metadata])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(annotation)) != 2:
            raise TypeError(f"only X | None unions compile, not {annotation!r}")
        inner_type, inner_checks, nested = _translate(args[0], metadata)
        return inner_type | None, inner_checks, nested

    meta: dict[str, Any] = {}
    checks: list[Check] = []
    befores: list[Check] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            # A description on an annotated type: its constraints, if any, are its metadata.
            inner_meta = list(item.metadata)
            _, inner_checks, _ = _translate(annotation, inner_meta)
            if inner_meta:
                raise TypeError("constraints inside a nested Field() do not compile")
            checks += inner_checks
        elif isinstance(item, Strict):
            if not item.strict:
                raise TypeError("Strict(False) does not compile")
        elif isinstance(item, annotated_types.Ge):
            meta["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            meta["le"] = item.le
        elif isinstance(item, annotated_types.MaxLen):
            meta["max_length"] = item.max_length
        elif isinstance(item, StringConstraints):
            unknown = {
                k
                for k in ("strip_whitespace", "to_upper", "to_lower", "strict", "min_length")
                if getattr(item, k) is not None
            }
            if item.ascii_only is not None or unknown:
                raise TypeError(f"string constraints {sorted(unknown)} do not compile")
            if item.max_length is not None:
                meta["max_length"] = item.max_length
            if item.pattern is not None:
                meta["pattern"] = _python_regex(str(item.pattern))
        elif isinstance(item, AfterValidator):
            checks.append(_value_only(item.func))
        elif isinstance(item, BeforeValidator) and item.func in _TIME_BEFORE_VALIDATORS:
            befores.append(_value_only(item.func))
        else:
            raise TypeError(f"{item!r} does not compile")

    if annotation is AwareDatetime:
        if meta or checks:
            raise TypeError("constraints on a business time do not compile")
        return str, [_business_time(befores)], None
    if befores:
        raise TypeError(f"before-validators on {annotation!r} do not compile")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if meta or checks:
            raise TypeError("constraints on a nested model do not compile")
        nested = compile_model(annotation)
        return nested.struct, [], nested
    if annotation in (str, int, bool, uuid.UUID) or typing.get_origin(annotation) is Literal:
        return (
            (typing.Annotated[annotation, msgspec.Meta(**meta)] if meta else annotation),
            checks,
            None,
        )
    raise TypeError(f"{annotation!r} does not compile")


#: Struct-level counterparts of the models' ``model_validator(mode="after")`` functions,
#: by the validator's name. A model validator not listed here stops the compilation.
_MODEL_VALIDATORS: dict[str, Callable[[Any], None]] = {}


def struct_model_validator(name: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register what the model validator ``name`` does, done on the decoded struct."""

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        _MODEL_VALIDATORS[name] = fn
        return fn

    return register


class CompiledModel:
    """One pydantic model as a msgspec decoder (:meth:`decode`), plus the model's own
    validators run on what it decoded."""

    def __init__(
        self,
        model: type[BaseModel],
        struct: type[msgspec.Struct],
        fields: tuple[_FieldChecks, ...],
        after: tuple[Callable[[Any], None], ...],
    ) -> None:
        self.model = model
        self.struct = struct
        self._fields = fields
        #: Only the fields with something to check, as (name, checks, nested).
        self._checked = tuple(
            (f.name, f.checks, f.nested) for f in fields if f.checks or f.nested is not None
        )
        self._after = after
        self._decoder = msgspec.json.Decoder(struct)

    def decode(self, value: bytes) -> Any:
        """The document as the struct, checked as the model checks it; :class:`Refused`
        when the compiled decoder does not take it (then ask the model)."""
        try:
            decoded = self._decoder.decode(value)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise Refused(str(exc)) from None
        try:
            self._check(decoded)
        except Refused:
            raise
        except (ValueError, TypeError, AssertionError) as exc:
            raise Refused(str(exc)) from None
        return decoded

    def _check(self, obj: Any) -> None:
        for name, checks, nested in self._checked:
            value = getattr(obj, name)
            if value is None:
                continue
            if nested is not None:
                nested._check(value)
                continue
            kept = value
            for check in checks:
                kept = check(kept)
            if kept is not value:
                setattr(obj, name, kept)
        for after in self._after:
            after(obj)

    def from_model(self, instance: BaseModel) -> Any:
        """The struct holding what a validated model instance holds (no checks: the model
        made them)."""
        values = {}
        for field in self._fields:
            value = getattr(instance, field.name)
            if field.nested is not None and value is not None:
                value = field.nested.from_model(value)
            values[field.name] = value
        for name in self.struct.__struct_fields__:
            if name not in values:
                values[name] = getattr(instance, name)
        return self.struct(**values)


def compile_model(model: type[BaseModel]) -> CompiledModel:
    """Compile ``model`` (and the models of its fields) as the module docstring says."""
    if model.model_config.get("extra", "ignore") != "ignore":
        raise TypeError(f"{model.__name__}: only models that ignore unknown fields compile")
    decorators = model.__pydantic_decorators__
    if decorators.validators or decorators.root_validators or decorators.field_serializers:
        raise TypeError(f"{model.__name__}: legacy validators do not compile")
    field_validators: dict[str, list[Check]] = {}
    for decorator in decorators.field_validators.values():
        if decorator.info.mode != "after":
            raise TypeError(
                f"{model.__name__}: {decorator.info.mode} field validators do not compile"
            )
        for name in decorator.info.fields:
            field_validators.setdefault(name, []).append(decorator.func)
    after = []
    for name, model_validator in decorators.model_validators.items():
        if model_validator.info.mode != "after" or name not in _MODEL_VALIDATORS:
            raise TypeError(f"{model.__name__}: model validator {name} has no struct counterpart")
        after.append(_MODEL_VALIDATORS[name])

    spec: list[tuple[str, Any, Any]] = []
    fields: list[_FieldChecks] = []
    for name, info in model.model_fields.items():
        if info.alias is not None or info.validation_alias is not None:
            raise TypeError(f"{model.__name__}.{name}: aliases do not compile")
        struct_type, checks, nested = _translate(info.annotation, info.metadata)
        checks += field_validators.pop(name, [])
        fields.append(_FieldChecks(name, tuple(checks), nested))
        if info.is_required():
            spec.append((name, struct_type, msgspec.NODEFAULT))
        else:
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel) and nested is not None:
                # A fresh copy each time: decoded structs are filled in place (see _check).
                default = msgspec.field(
                    default_factory=functools.partial(
                        msgspec.structs.replace, nested.from_model(default)
                    )
                )
            elif default is not None and not isinstance(default, (str, int, bool)):
                raise TypeError(f"{model.__name__}.{name}: default {default!r} does not compile")
            spec.append((name, struct_type, default))
    if field_validators:
        raise TypeError(
            f"{model.__name__}: validators of unknown fields {sorted(field_validators)}"
        )
    # Required fields first, as msgspec wants; keyword construction and decoding ignore order.
    ordered = [s for s in spec if s[2] is msgspec.NODEFAULT] + [
        s for s in spec if s[2] is not msgspec.NODEFAULT
    ]
    struct = msgspec.defstruct(
        model.__name__,
        [(n, t) if d is msgspec.NODEFAULT else (n, t, d) for n, t, d in ordered],
        kw_only=True,
        # Plain values and nested structs only: nothing a cycle could form through.
        gc=False,
        module=__name__,
    )
    return CompiledModel(model, struct, tuple(fields), tuple(after))

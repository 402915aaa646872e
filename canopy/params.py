"""params.yaml: one validated schema, each stage checking the sections it reads.

`load_params(path, sections)` returns a frozen `CanopyParams` or raises `UserError` with one
line naming the key's path and the allowed values, e.g.

    params.yaml: schedule: Input should be 'linear', 'cosine' or 'sigmoid' (got 'cosin')

Every stage checks the whole file's top-level keys (a typo there fails every stage, with a
did-you-mean) and the sections it reads, each against its owner's schema; it does not import
the schemas of sections it does not read, so a change to one stage's schema does not re-run
the others under DVC. A typo inside a section fails the first stage that reads it, and
`canopy params check` checks every section at once.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from canopy.errors import UserError
from canopy.schema import StrictModel

DEFAULT_PARAMS = Path("params.yaml")

# Each section of params.yaml and the schema that owns it, imported only where it is read.
SECTION_SCHEMAS: dict[str, tuple[str, str]] = {
    "etl": ("canopy.etl.params", "EtlParams"),
    "model": ("canopy.model.params", "ModelParams"),
    "diffusion": ("canopy.model.params", "DiffusionParams"),
    "train": ("canopy.train.params", "TrainParams"),
    "sample": ("canopy.sample.params", "SampleParams"),
    "evaluate": ("canopy.evaluate.params", "EvaluateParams"),
}
ALL_SECTIONS = tuple(SECTION_SCHEMAS)

# Keys that named an artifact's folder in one stage's section before `paths` gave each
# artifact one name; a params file that still has one is told where it went.
MOVED_KEYS = {("train", "data"): "paths.tiles", ("train", "out"): "paths.models",
              ("sample", "models"): "paths.models", ("sample", "out"): "paths.samples",
              ("evaluate", "out"): "paths.metrics (a folder: evaluate.json is written in it)"}


class PathsParams(StrictModel):
    """One name per artifact, for every stage that writes or reads it (and for dvc.yaml,
    which takes its outs and deps from here)."""

    tiles: str = Field("data/tiles", min_length=1)  # etl writes; train and evaluate read
    models: str = Field("models", min_length=1)  # train writes; sample reads
    samples: str = Field("data/samples", min_length=1)  # sample writes; evaluate reads
    metrics: str = Field("metrics", min_length=1)  # evaluate (and judge report) write


class CanopyParams(StrictModel):
    """The keys every stage reads. `schema_for` adds each section: checked against its own
    schema where the stage reads it, otherwise taken as an unchecked mapping."""

    # The sections this class checks (schema_for sets it); the cross-section checks below run
    # where all the sections they compare are checked.
    checked_sections: ClassVar[frozenset[str]] = frozenset()

    # The seed of every random draw: the tiles' split, the initial weights and the batches,
    # the noise of each sample.
    seed: int = Field(0, ge=0, le=2**63 - 1)
    # The noise schedule of the discrete (vp) process.
    schedule: Literal["linear", "cosine", "sigmoid"] = "linear"
    paths: PathsParams = Field(default_factory=PathsParams)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for (section, key), target in MOVED_KEYS.items():
                if isinstance(raw.get(section), dict) and key in raw[section]:
                    raise ValueError(f"{section}.{key}: moved to {target}")
        return raw

    @model_validator(mode="after")
    def _sections_fit_together(self) -> CanopyParams:
        for sections, check in CROSS_CHECKS:
            if set(sections) <= self.checked_sections:
                check(self)
        return self


def _tile_fits_network(params: Any) -> None:
    factor = params.model.downsample_factor
    if params.etl.tile_size % factor:
        raise ValueError(
            f"etl.tile_size {params.etl.tile_size} is not divisible by {factor}, the U-Net's "
            f"down-sampling factor for model.dim_mults {params.model.dim_mults}: "
            f"use a tile_size that is a multiple of {factor} or fewer dim_mults"
        )


def _sampler_fits_process(params: Any) -> None:
    continuous = params.diffusion.process != "vp"
    if continuous != (params.sample.spacing == "karras"):
        raise ValueError(
            f"sample.spacing {params.sample.spacing} does not fit diffusion.process "
            f"{params.diffusion.process}: use karras with a continuous process (edm), "
            "quadratic or trailing with vp"
        )
    if params.sample.sampler == "heun" and not continuous:
        raise ValueError("sample.sampler heun needs a continuous process: set "
                         "diffusion.process to edm (and sample.spacing to karras)")
    if not continuous and params.sample.steps > params.diffusion.timesteps:
        raise ValueError(
            f"sample.steps ({params.sample.steps}) exceeds diffusion.timesteps "
            f"({params.diffusion.timesteps}); use at most {params.diffusion.timesteps}"
        )


CROSS_CHECKS: tuple[tuple[tuple[str, ...], Callable[[Any], None]], ...] = (
    (("etl", "model"), _tile_fits_network),
    (("diffusion", "sample"), _sampler_fits_process),
)


@functools.cache
def schema_for(sections: frozenset[str]) -> type[CanopyParams]:
    """The params schema of a stage that reads `sections` (all of them: `canopy params check`)."""
    unknown = sections - set(SECTION_SCHEMAS)
    if unknown:
        raise ValueError(f"no params section {sorted(unknown)}")
    fields: dict[str, Any] = {}
    for name, (module, attribute) in SECTION_SCHEMAS.items():
        if name in sections:
            schema = getattr(importlib.import_module(module), attribute)
            fields[name] = (schema, Field(default_factory=schema))
        else:
            fields[name] = (dict[str, Any], Field(default_factory=dict))
    schema = create_model("CanopyParams", __base__=CanopyParams, **fields)
    schema.checked_sections = sections
    return schema


# Far beyond any real params file; bounds what a hostile or broken one costs to read.
MAX_PARAMS_BYTES = 1_000_000
MAX_NESTING = 50
MAX_VALUE_EXCERPT = 80


class _ParamsLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses what a params file never needs and could abuse: an alias
    (a few hundred bytes of nested aliases expand to gigabytes) and a key given twice (the
    last one would win silently)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor[:40]}) are not allowed in params",
                event.start_mark)
        if self.depth >= MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_NESTING} levels deep",
                self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = str(self.construct_object(key_node, deep=True))
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key[:40]!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: Path | str = DEFAULT_PARAMS,
                sections: tuple[str, ...] = ALL_SECTIONS) -> CanopyParams:
    """The params file at `path`, its top-level keys and `sections` checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"params file {path} not found: run from the repository root or pass --params PATH"
        )
    size = path.stat().st_size
    if size > MAX_PARAMS_BYTES:
        raise UserError(f"{path} is {size} bytes; a params file is at most "
                        f"{MAX_PARAMS_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start} cannot be decoded); "
                        "save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    return parse_params(raw, source=str(path), sections=sections)


def parse_params(raw: dict[str, Any], source: str = "params",
                 sections: tuple[str, ...] | frozenset[str] = ALL_SECTIONS) -> CanopyParams:
    schema = schema_for(frozenset(sections))
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{source}: " + format_validation_error(err, schema)) from None


def format_validation_error(err: ValidationError, root: type[BaseModel]) -> str:
    """One line per problem, joined: `key.path: message (got value)`."""
    lines = []
    for problem in err.errors(include_url=False):
        loc = [part for part in problem["loc"] if not _is_union_tag(part)]
        key = ".".join(str(part) for part in loc) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(root, loc))
            continue
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "missing":
            lines.append(f"{key}: required key is missing")
            continue
        if not loc or message.startswith(key + "."):
            lines.append(message)  # a cross-key check already names its keys
            continue
        got = problem.get("input")
        suffix = "" if isinstance(got, dict) or "got" in message else f" (got {_excerpt(got)})"
        lines.append(f"{key}: {message}{suffix}")
    return "; ".join(lines)


def _excerpt(value: Any) -> str:
    """repr(value), cut short: a bad value may be megabytes long."""
    text = repr(value)
    if len(text) <= MAX_VALUE_EXCERPT:
        return text
    return f"{text[:MAX_VALUE_EXCERPT]}... ({len(text)} characters)"


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the tried member type to the location of union errors ("int", "str",
    # "list[str]"...): noise for a user who wrote a key, not a type.
    return isinstance(part, str) and (part in {"int", "str", "float", "bool"} or "[" in part)


def _unknown_key_message(root: type[BaseModel], loc: list[Any]) -> str:
    *parents, name = loc
    model: Any = root
    for part in parents:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            model = None
            break
        model = _model_of(field.annotation)
    key = ".".join(str(part) for part in loc)
    allowed = sorted(model.model_fields) if model is not None else []
    hint = difflib.get_close_matches(str(name), allowed, n=1)
    did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
    return f"{key}: unknown key{did_you_mean} allowed keys: {', '.join(allowed)}"


def _model_of(annotation: Any) -> Any:
    """The BaseModel class inside an annotation like `AoiParams`, `list[AoiParams]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def with_overrides(params: CanopyParams, section: str, values: dict[str, Any]) -> CanopyParams:
    """`params` with command-line options (None = not given) merged into `section`,
    validated like the file so a bad option fails the same way."""
    given = {key: value for key, value in values.items() if value is not None}
    if not given:
        return params
    merged = params.model_dump(mode="json")
    merged[section] = {**merged[section], **given}
    options = ", ".join(f"--{key.replace('_', '-')}" for key in given)
    return parse_params(merged, source=f"command-line option ({options})",
                        sections=type(params).checked_sections)


def section_hash(params: CanopyParams, *sections: str) -> str:
    """Hash of the named sections (and top-level keys), for resume and manifest checks."""
    from canopy.hashing import sha256_json

    dumped = params.model_dump(mode="json")
    return sha256_json({name: dumped[name] for name in sections})

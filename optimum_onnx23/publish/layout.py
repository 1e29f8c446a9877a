"""The Hub layout of an exported folder, as transformers.js, optimum-onnx and onnxruntime-genai read it.

    README.md               model card (generated unless the folder has one)
    config.json             + "transformers.js_config": which graphs have external data
    tokenizer_config.json   + add_bos_token/add_eos_token when only tokenizer.json has them
    generation_config.json, tokenizer files, export_report.json (local paths removed)
    genai_config.json       onnxruntime-genai's description of the graph it runs (`genai_precision`)
    onnx/model.onnx         graph, opset 23, with its backend variants inside (the source of truth)
    onnx/model.onnx_data    its external weights (the name transformers.js derives)
    onnx/model_<suffix>.onnx (+ _data)   other precisions, named by transformers.js' dtype suffixes:
                            files found in the folder, and each attached backend variant a consumer
                            understands, materialized with only the tensors it reads (precisions.py)
    onnx/manifest.json      the graphs per execution provider, as an onnxruntime model package

`plan_hub_layout` reads the folder (flat, as the exporter writes it, or already in this layout)
and returns the plan without writing anything; `save_pretrained` writes it to a new folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from huggingface_hub import ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .. import __version__
from ..errors import ModelNotFoundError, OutputFolderError
from ..exporters.output import check_output_folder, staged_output_folder
from .card import DEFAULT_LIBRARY_NAME, CardInputs, build_model_card, validate_model_card
from .errors import GenaiPrecisionError
from .genai_config import GenaiConfigError, make_genai_config
from .model_package import MANIFEST_NAME, PackageEntry, make_manifest
from .onnx_files import ONNX_SUBFOLDER, OnnxModelFiles, find_onnx_models
from .precisions import MaterializedVariant, PrecisionFile, plan_variant_files, precision_of_suffix
from .repo_id import check_repo_id  # noqa: F401 (re-exported; light for the CLI)

__all__ = ["HubFile", "HubLayout", "plan_hub_layout", "save_pretrained", "check_repo_id", "GENERATED_FILES", "AUTO"]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
GENAI_CONFIG_NAME = "genai_config.json"
GENERATED_FILES = (CARD_NAME, GENAI_CONFIG_NAME, "config.json", "export_report.json", "tokenizer_config.json")
_SKIPPED_SUFFIXES = (".lock", ".tmp", ".partial")
AUTO = "auto"  # genai_precision: the graph our own CPU sessions would run


@dataclass(frozen=True)
class HubFile:
    """A file of the repo: copied from `source`, generated `content`, or `nbytes` that `writer`
    writes (a materialized variant's data, too big to hold in memory)."""

    path_in_repo: str
    source: Path | None = None
    content: bytes | None = None
    writer: Callable[[BinaryIO], None] | None = field(default=None, repr=False, compare=False)
    nbytes: int | None = None

    @property
    def size(self) -> int:
        if self.content is not None:
            return len(self.content)
        return self.nbytes if self.writer is not None else self.source.stat().st_size

    def write_to(self, target: Path) -> None:
        if self.content is not None:
            target.write_bytes(self.content)
        elif self.writer is not None:
            with open(target, "wb") as out:
                self.writer(out)
        else:
            shutil.copyfile(self.source, target)


@dataclass
class HubLayout:
    repo_id: str
    files: list[HubFile]
    card: ModelCard
    onnx_models: list[OnnxModelFiles]
    variants: list[str]
    genai_config: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    precisions: list[PrecisionFile] = field(default_factory=list)  # the main graph first
    genai_precision: PrecisionFile | None = None  # what genai_config.json runs
    model_package: dict[str, Any] | None = None  # onnx/manifest.json

    def __getitem__(self, path_in_repo: str) -> HubFile:
        for f in self.files:
            if f.path_in_repo == path_in_repo:
                return f
        raise KeyError(path_in_repo)

    @property
    def paths(self) -> list[str]:
        return [f.path_in_repo for f in self.files]

    def __repr__(self) -> str:  # the dataclass repr printed the whole card and report at the prompt
        size = sum(f.size for f in self.files)
        variants = f", variants {', '.join(self.variants)}" if self.variants else ""
        return f"HubLayout({self.repo_id!r}: {len(self.files)} files, {size / 1e6:.1f} MB{variants})"

    def write(self, directory: Path) -> None:
        """Write every file under `directory`. Files are copied, never hard-linked: onnx refuses to
        load external data that has several links (its guard against hardlink attacks)."""
        for f in self.files:
            target = directory / f.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            f.write_to(target)

    def write_materialized(self, directory: Path) -> dict[str, Path]:
        """Write the files that exist only as a `writer` (materialized variants' data) under
        `directory`; returns path in repo -> written file (for an upload)."""
        written = {}
        for f in self.files:
            if f.writer is not None:
                target = directory / f.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                f.write_to(target)
                written[f.path_in_repo] = target
        return written


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"{path} is not valid JSON ({type(error).__name__}); re-export the model.") from None
    return data if isinstance(data, dict) else None


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _is_hub_id(name: str | None) -> bool:
    if not name or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _transformers_js_config(config: dict[str, Any], graphs: list[tuple[str, list[str]]], notes: list[str]) -> dict[str, Any]:
    """config.json plus the external-data map transformers.js needs to fetch `<graph>_data`
    (`graphs`: each graph's file name and its data files' names)."""
    external = {}
    for name, data in graphs:
        if not data:
            continue
        if data == [f"{name}_data"]:
            external[name] = True
        else:
            notes.append(f"transformers.js will not load {name}: its weights are in {', '.join(data)}, not {name}_data.")
    if not external:
        return config
    js_config = dict(config.get("transformers.js_config") or {})
    declared = js_config.get("use_external_data_format")
    declared = dict(declared) if isinstance(declared, dict) else {}
    js_config["use_external_data_format"] = {**declared, **external}
    return {**config, "transformers.js_config": js_config}


def _template_special_tokens(tokenizer_json: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """The special tokens that tokenizer.json's post-processor puts first and last around one sequence."""
    processor = (tokenizer_json or {}).get("post_processor") or {}
    if processor.get("type") == "Sequence":
        processor = next((p for p in processor.get("processors", []) if p.get("type") == "TemplateProcessing"), {})
    single = processor.get("single") or []
    first = single[0].get("SpecialToken", {}).get("id") if single else None
    last = single[-1].get("SpecialToken", {}).get("id") if len(single) > 1 else None
    return first, last


def _tokenizer_config_for_transformers_js(tokenizer_config: dict[str, Any], tokenizer_json: dict[str, Any] | None) -> dict[str, Any]:
    """tokenizer_config.json plus `add_bos_token`/`add_eos_token` when only tokenizer.json says so.

    transformers 5 keeps these in tokenizer.json's post-processor; transformers.js' text-generation
    pipeline reads the flags from tokenizer_config.json and, without them, drops the BOS that
    transformers adds, so the two would generate from different prompts.
    """
    first, last = _template_special_tokens(tokenizer_json)
    updated = dict(tokenizer_config)
    if "add_bos_token" not in updated and first is not None and first == updated.get("bos_token"):
        updated["add_bos_token"] = True
    if "add_eos_token" not in updated and last is not None and last == updated.get("eos_token"):
        updated["add_eos_token"] = True
    return updated


def _precision_files(
    models: list[OnnxModelFiles], main_dtype: str, materialized: list[tuple[MaterializedVariant, str, str]]
) -> list[PrecisionFile]:
    """The main graph, the transformers.js precision files found in the folder, then the materialized variants."""
    precisions = []
    for model in models:
        if model.name == "model.onnx":
            precision, dtype = main_dtype, "fp32"  # transformers.js' "fp32" is the file without suffix
        elif model.variant is not None and (known := precision_of_suffix(model.variant)) is not None:
            precision, dtype = known
        else:
            continue
        size = model.model.stat().st_size + sum(p.stat().st_size for p in model.external_data)
        precisions.append(
            PrecisionFile(precision, dtype, f"{ONNX_SUBFOLDER}/{model.name}", tuple(f"{ONNX_SUBFOLDER}/{p.name}" for p in model.external_data), size)
        )
    for variant, precision, dtype in materialized:
        precisions.append(
            PrecisionFile(
                precision, dtype, f"{ONNX_SUBFOLDER}/{variant.file_name}", (f"{ONNX_SUBFOLDER}/{variant.data_name}",),
                len(variant.graph) + variant.data_size, variant.variant,
            )
        )
    return precisions


def _genai_choice(
    requested: str, precisions: list[PrecisionFile], materialized: list[tuple[MaterializedVariant, str, str]]
) -> PrecisionFile | None:
    """The precision genai_config.json runs: `auto` is the variant our CPU sessions pick (highest
    `variant.priority` among the materialized ones listing the CPU provider), else the main graph;
    otherwise the precision (`int4`) or transformers.js dtype (`q4`) named, `main` for the main graph."""
    main = next((p for p in precisions if p.graph == f"{ONNX_SUBFOLDER}/model.onnx"), None)
    if requested == AUTO:
        cpu = [v for v, _, _ in materialized if "CPUExecutionProvider" in v.providers]
        best = max(cpu, key=lambda v: v.priority, default=None)
        return next((p for p in precisions if best is not None and p.variant == best.variant), main)
    if requested == "main":
        found = main
    else:
        found = next((p for p in precisions if requested in (p.precision, p.dtype)), None)
    if found is None:
        have = ", ".join(dict.fromkeys(p.precision for p in precisions)) or "none"
        hint = (
            " attach the variant first (`optimum-cli onnx23 variants attach FOLDER --variant ort-cpu-int4` for int4), or"
            if requested in ("int4", "q4", "int8") else ""
        )
        raise GenaiPrecisionError(
            f"genai precision {requested!r}: the folder has no such graph (it has: {have});{hint} pass one of those or `auto`."
        )
    return found


def plan_hub_layout(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    *,
    base_model: str | None = None,
    library_name: str = DEFAULT_LIBRARY_NAME,
    license: str | None = None,
    genai_precision: str = AUTO,
) -> HubLayout:
    """Plan the Hub repo for the export `folder` (flat or Hub layout); reads, never writes.

    Guarantees: at least one ONNX graph, each with its external data, under `onnx/`; config.json
    at the root; a model card whose metadata passed `validate_model_card`; no hidden or lock file.
    Each backend variant of `model.onnx` that a consumer understands (`precisions.VARIANT_PRECISIONS`:
    int4 -> `model_q4.onnx`, int8 -> `model_int8.onnx`) is planned as its own graph and data file,
    declared to transformers.js (`use_external_data_format`) and mapped in `onnx/manifest.json`; the
    in-file variants stay in `model.onnx`. `genai_precision` picks the graph genai_config.json names
    (`auto`: the one our CPU sessions run).
    Raises `NoOnnxFilesError`, `ModelNotFoundError`, `InvalidRepoIdError`, `ModelCardError` or
    `GenaiPrecisionError` (one line each).
    """
    folder = Path(folder)
    models = find_onnx_models(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise ModelNotFoundError(f"{folder} has no config.json; export with `optimum-cli export onnx --dynamo`, which writes it.")
    report = _read_json(folder / "export_report.json") or {}
    if base_model is None and _is_hub_id(report.get("model")):
        base_model = report["model"]
    repo_id = check_repo_id(repo_id if repo_id is not None else folder.absolute().name)
    already_hub = all(m.model.parent.name == ONNX_SUBFOLDER and m.model.parent.parent == folder for m in models)
    notes: list[str] = []
    main = next((m for m in models if m.name == "model.onnx"), None)
    main_dtype = str(report.get("dtype") or "fp32")
    materialized = plan_variant_files(main, main_dtype, {m.name for m in models}, notes) if main is not None else []
    precisions = _precision_files(models, main_dtype, materialized)
    genai_choice = _genai_choice(genai_precision, precisions, materialized)

    files: list[HubFile] = []
    moved = set()
    for model in models:
        for path in (model.model, *model.external_data):
            if path not in moved:
                moved.add(path)
                files.append(HubFile(f"{ONNX_SUBFOLDER}/{path.name}", source=path))
    for variant, _, _ in materialized:
        files.append(HubFile(f"{ONNX_SUBFOLDER}/{variant.file_name}", content=variant.graph))
        files.append(HubFile(f"{ONNX_SUBFOLDER}/{variant.data_name}", writer=variant.write_data, nbytes=variant.data_size))

    root_files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_SKIPPED_SUFFIXES) and p not in moved
    )
    for path in root_files:
        if path.name in GENERATED_FILES or path.suffix == ".onnx" or ".variant-" in path.name:
            continue
        files.append(HubFile(path.name, source=path))

    graphs = [(m.name, [p.name for p in m.external_data]) for m in models]
    graphs += [(v.file_name, [v.data_name]) for v, _, _ in materialized]
    files.append(HubFile("config.json", content=_json_bytes(_transformers_js_config(config, graphs, notes))))
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    if tokenizer_config is not None:
        tokenizer_config = _tokenizer_config_for_transformers_js(tokenizer_config, _read_json(folder / "tokenizer.json"))
        files.append(HubFile("tokenizer_config.json", content=_json_bytes(tokenizer_config)))
    if report:
        public_report = dict(report)
        public_report.pop("output", None)  # the uploader's local path
        if not _is_hub_id(public_report.get("model")):
            public_report["model"] = base_model or Path(str(public_report.get("model", ""))).name
        files.append(HubFile("export_report.json", content=_json_bytes(public_report)))

    # A Hub-layout folder keeps its genai_config.json unless a precision is asked for.
    genai_config = _read_json(folder / GENAI_CONFIG_NAME) if already_hub and genai_precision == AUTO else None
    if genai_config is not None:
        filename = str(genai_config.get("model", {}).get("decoder", {}).get("filename", ""))
        genai_choice = next((p for p in precisions if p.graph == filename), None)
    elif main is not None and genai_choice is not None:
        try:
            genai_config = make_genai_config(main, genai_choice.graph, config, _read_json(folder / "generation_config.json"))
        except GenaiConfigError as error:
            notes.append(f"No {GENAI_CONFIG_NAME}: {error}.")
            genai_choice = None
    elif main is None:
        notes.append(f"No {GENAI_CONFIG_NAME}: the folder has no onnx/model.onnx for onnxruntime-genai to run.")
    if genai_config is not None:
        files.append(HubFile(GENAI_CONFIG_NAME, content=_json_bytes(genai_config)))
    else:
        genai_choice = None

    model_package = None
    if materialized and not (folder / ONNX_SUBFOLDER / MANIFEST_NAME).is_file():
        main_entry = PackageEntry("model.onnx", main_dtype, (), 0)
        entries = [PackageEntry(v.file_name, precision, tuple(v.providers), v.priority, v.variant) for v, precision, _ in materialized]
        model_package = make_manifest(main_entry, entries, repo_id, __version__)
        files.append(HubFile(f"{ONNX_SUBFOLDER}/{MANIFEST_NAME}", content=_json_bytes(model_package)))
    elif (folder / ONNX_SUBFOLDER / MANIFEST_NAME).is_file():
        files.append(HubFile(f"{ONNX_SUBFOLDER}/{MANIFEST_NAME}", source=folder / ONNX_SUBFOLDER / MANIFEST_NAME))

    # transformers.js precision files (model_q4.onnx -> q4), then backend variants attached inside graphs.
    variants = [m.variant for m in models if m.variant]
    for name in [v for m in models for v in m.attached_variants]:
        if name not in variants:
            variants.append(name)
    opset = max(m.opset for m in models)
    if (folder / CARD_NAME).is_file():
        card = validate_model_card((folder / CARD_NAME).read_text(encoding="utf-8"))
    else:
        card = build_model_card(
            CardInputs(
                repo_id=repo_id,
                report=report,
                files={f.path_in_repo: f.size for f in files},
                model_type=str(config.get("model_type", "unknown")),
                opset=opset,
                variants=variants,
                base_model=base_model,
                library_name=library_name,
                license=license,
                has_genai_config=genai_config is not None,
                precisions=precisions,
                genai_precision=genai_choice,
                model_package=model_package is not None or (folder / ONNX_SUBFOLDER / MANIFEST_NAME).is_file(),
            )
        )
    files.insert(0, HubFile(CARD_NAME, content=str(card).encode()))
    for note in notes:
        logger.warning(note)
    return HubLayout(repo_id, files, card, models, variants, genai_config, notes, precisions, genai_choice, model_package)


def save_pretrained(
    folder: str | os.PathLike,
    save_directory: str | os.PathLike,
    repo_id: str | None = None,
    *,
    base_model: str | None = None,
    library_name: str = DEFAULT_LIBRARY_NAME,
    license: str | None = None,
    overwrite: bool = False,
    genai_precision: str = AUTO,
) -> HubLayout:
    """Write the Hub layout of the export `folder` into `save_directory`, ready to push as it is.

    `save_directory` is refused if it exists and is not empty, unless `overwrite`; it is built
    beside its final place and renamed only when complete. `repo_id` (default: the folder name)
    only shapes the usage snippets of the card. `genai_precision`: see `plan_hub_layout`.
    """
    save_directory = Path(save_directory)
    if save_directory.absolute() == Path(folder).absolute():
        raise OutputFolderError(f"Cannot lay out {folder} into itself; pass another save_directory.")
    layout = plan_hub_layout(
        folder, repo_id or save_directory.absolute().name, base_model=base_model, library_name=library_name, license=license,
        genai_precision=genai_precision,
    )
    check_output_folder(save_directory, overwrite)
    with staged_output_folder(save_directory) as staging:
        layout.write(staging)
    return layout

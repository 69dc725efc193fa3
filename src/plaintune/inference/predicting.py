"""Inference: load each saved model through the common load path, predict, combine an ensemble,
write the submission. `plaintune.predict` (api.py), which inference.py calls, runs `predict_submission`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from box import Box

from plaintune.commands import CLI, Switches
from plaintune.config.schema import data_files
from plaintune.data import tables as data
from plaintune.data.batching import eval_loader
from plaintune.data.tokenized import PairEncoding, make_dataset
from plaintune.errors import UserError
from plaintune.inference import ensemble, written
from plaintune.inference.report import check_report_folder, write_error_report
from plaintune.inference.submission import postprocess, write_submission
from plaintune.model.architecture import read_architecture
from plaintune.model.loading import adopt_pad_token_id, build_model, build_tokenizer, check_tokenizer_fits
from plaintune.model.objective import Objective, objective_for
from plaintune.model.outputs import model_outputs
from plaintune.names import report_folder_name
from plaintune.recipe.metrics import compute_metrics, shown
from plaintune.rundir import layout as rundir
from plaintune.rundir.guard import check_outputs
from plaintune.runtime import distributed, precision
from plaintune.runtime.precision import AUTOCAST
from plaintune.weights import record as saved_record
from plaintune.weights.formats import bundle_model_spec, read_record
from plaintune.weights.load import LoadRules, load_weights


def _has_tokenizer(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")
    )


def _gone(name: str) -> bool:
    """A bundle's recorded model.name that was a local folder and is no longer there: the config's
    model.name is used instead (the weights then say whether it is the same model)."""
    looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().is_absolute()
    return looks_local and not Path(name).expanduser().exists()


def load_model_for_inference(cfg: Box, source: Path, trust: bool = False):
    """(model, tokenizer, report) for a checkpoint: the architecture from the checkpoint's own
    config.json when it has one, else from model.name; weights through the common load path."""
    spec = dict(cfg.model)
    tokenizer_spec, tokenizer_where = cfg.model, "model.name"  # a directory without a tokenizer: model.name's
    if source.is_dir() and (source / "config.json").is_file():
        spec["name"] = str(source)
    else:  # a resume bundle holds weights only: its model is the one its run was built from
        trained = bundle_model_spec(source) or {}
        name = trained.get("name")
        if isinstance(name, str) and name != spec["name"] and _gone(name):
            print(f"note: {source} was trained from {name!r}, which is gone; building model.name {spec['name']!r}")
        elif isinstance(name, str) and name != spec["name"]:
            print(f"note: model.name {name!r} (what {source} was trained from; the config says {spec['name']!r})")
            spec["name"] = name
            spec["config_overrides"] = trained.get("config_overrides") or {}
            tokenizer_spec = spec
    # the checkpoint knows what it is: config.json's record, or a plaintune resume bundle's config
    spec["kind"] = (read_record(source) or {}).get("kind", spec["kind"])
    model = build_model(spec, pretrained=False)

    rules = LoadRules(
        cfg.model.key_rules,
        allow_missing=(),
        allow_unexpected=cfg.model.allow_unexpected,
        allow_nonfinite=cfg.model.allow_nonfinite,
    )
    hint = (
        "inference needs every tensor of the model; is it a checkpoint of another model or task? (this "
        f"config: model.name={spec['name']}, model.num_labels={cfg.model.num_labels})"
    )
    report = load_weights(model, source, rules, trust=trust, strict_hint=hint)
    architecture = read_architecture(model)
    if _has_tokenizer(source):
        tokenizer, tokenizer_where = build_tokenizer({"name": str(source)}, architecture), f"--saved_model '{source}'"
    else:
        tokenizer = build_tokenizer(tokenizer_spec, architecture)
    check_tokenizer_fits(architecture, tokenizer, tokenizer_spec, tokenizer_where)
    adopt_pad_token_id(model.config, tokenizer)
    return model.eval(), tokenizer, report


def inference_encoding(
    cfg: Box, model: torch.nn.Module, objective: Objective, source: Path, announce: bool = True
) -> PairEncoding:
    """How a checkpoint reads its pairs: as a plaintune checkpoint recorded it was trained (max_length,
    segment ids, prompt), else from the config and the model's own architecture. A recorded value the
    config contradicts wins, with a note: pairs read otherwise would be scored unlike in training
    (and unlike the sentence-transformers export)."""
    recorded = saved_record.trained_inputs(
        saved_record.of_config(model.config, str(source)) if source.is_dir() else read_record(source)
    )
    wanted = {"max_length": cfg.model.max_length, "prompt": cfg.model.prompt or ""}
    for key, value in wanted.items():
        if key in recorded and recorded[key] != value and announce:
            print(f"note: model.{key} {recorded[key]!r} (what {source} was trained with; the config says {value!r})")
    return PairEncoding(
        objective.kind,
        recorded.get("max_length", wanted["max_length"]),
        recorded.get("token_type_ids", read_architecture(model).token_type_ids),
        recorded.get("prompt", wanted["prompt"]),
    )


def predicts_both_orders(objective: Objective, symmetric: bool) -> bool:
    """Whether inference.symmetric makes this model predict each pair twice: a bi-encoder's
    cosine is symmetric already, so it predicts once."""
    return symmetric and objective.kind != "bi_encoder"


def member_outputs(
    model,
    tokenizer,
    objective: Objective,
    table: data.PairTable,
    encoding: PairEncoding,
    cfg: Box,
    device: torch.device,
    symmetric: bool,
) -> np.ndarray:
    """One model's outputs in a form that averages: scores (regression) or class probabilities.

    With `symmetric`, also predicts every pair as (sentence_2, sentence_1) and averages the two
    (see predicts_both_orders).
    """
    autocast_dtype = AUTOCAST[inference_precision(cfg, device)[0]]
    symmetric = predicts_both_orders(objective, symmetric)
    runs = []
    for swap in (False, True) if symmetric else (False,):
        dataset = make_dataset(table, tokenizer, encoding, swap=swap)
        logits = model_outputs(
            model, eval_loader(dataset, cfg.training.eval_batch_size, objective.num_labels), device, autocast_dtype
        )
        runs.append(objective.predictions(logits) if objective.regression else softmax(logits))
    return np.mean(runs, axis=0)


def inference_precision(cfg: Box, device: torch.device) -> tuple[str, str]:
    """(precision, why): inference.precision, or training.precision when it is null; auto chooses for `device`."""
    return precision.resolve(cfg.inference.precision or cfg.training.precision, device)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def normalised_weights(weights: Optional[Sequence[float]], members: int) -> Optional[list[float]]:
    """--weights checked and scaled to sum 1 (huge weights would overflow inside the average)."""
    if weights is None:
        return None
    if len(weights) != members:
        raise UserError(f"--weights: {len(weights)} weights for {members} models; give one per model")
    if not all(math.isfinite(w) for w in [*weights, sum(weights)]):
        raise UserError(
            f"--weights: {' '.join(map(str, weights))} are not all finite numbers; give weights such as 1 2"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError("--weights: weights must be >= 0 and not all zero")
    total = math.fsum(weights)
    return [w / total for w in weights]


def read_inference_inputs(cfg: Box, write: bool) -> tuple[data.PairTable, Optional[data.PairTable]]:
    """The pairs to predict and, when data.test_path is set, the labelled test pairs; with `write`,
    the submission template is checked too. All before any model loads."""
    columns, num_labels = cfg.data.columns, cfg.model.num_labels
    table = data.read_pairs(
        cfg.data.predict_path, "data.predict_path", columns, cfg.data.encoding, labelled=None, unique_ids=True
    )  # labels when it has them: an error report
    if write:
        template = data.read_csv_checked(cfg.data.submission_template, "data.submission_template", cfg.data.encoding)
        data.require_columns(
            template, f"data.submission_template: '{cfg.data.submission_template}'", {"id": columns.id}
        )
    test = None
    if cfg.data.test_path:
        test = data.read_pairs(
            cfg.data.test_path,
            "data.test_path",
            columns,
            cfg.data.encoding,
            labelled=True,
            label_range=cfg.data.label_range if num_labels == 1 else None,
        )
    # what it reads, as training says it: a submission never comes from the demo set unnoticed
    labelled = " (labelled: scored, with an error report)" if table.labels is not None and num_labels == 1 else ""
    print(f"data: predict {table.path}  ({len(table):,} rows){labelled}")
    if write:
        print(f"data: template {cfg.data.submission_template}  ({len(template):,} rows)")
    if test is not None:
        print(f"data: test    {test.path}  ({len(test):,} rows)")
    return table, test


def check_inference_outputs(
    cfg: Box,
    output: Path,
    saved_models: Sequence[str],
    sources: Sequence[Path],
    config_path: Optional[Path],
    writes_report: bool,
    identity: Sequence[str],
    overwrite: bool,
    switches: Switches,
) -> bool:
    """The submission (and, for a labelled predict file, its error report) may not overwrite any input of
    this inference, nor land inside a run directory, nor replace a file plaintune did not write for these
    models (unless `overwrite`). Returns whether the submission replaces a file."""
    inputs = {f"data.{key}": cfg.data[key] for key in data_files()}
    inputs["--config"] = config_path
    inputs.update({f"--saved_model {name}": source for name, source in zip(saved_models, sources)})
    report = output.with_name(report_folder_name(output.stem))
    check_outputs(
        [
            ("inference.output_path", output, False),
            *([("inference.output_path", report, True)] if writes_report else []),
        ],
        inputs,
    )
    if writes_report:  # an unlabelled file writes none: whatever a folder of that name holds is not in the way
        check_report_folder(
            report, "inference.output_path", standalone=True, models=identity, overwrite=overwrite, switches=switches
        )
    rundir.check_not_in_a_run(output, "inference.output_path")
    return written.check_replace(output, identity, overwrite, "inference.output_path", switches)


def predict_submission(
    cfg: Box,
    saved_models: Sequence[str],
    weights: Optional[Sequence[float]] = None,
    trust: bool = False,
    config_path: Optional[Path] = None,
    write: bool = True,
    overwrite: bool = False,
    switches: Switches = CLI,
) -> pd.DataFrame:
    """Predict data.predict_path with one model or a (weighted) ensemble; with `write`, also write the
    submission to inference.output_path (null: output/<the models' run>.csv). Returns the id column and
    `target`: the predictions before rounding and clipping (class ids for classification). A file there
    that plaintune did not write for these models is replaced only with `overwrite`.

    Every input is checked before any model loads; each member goes through the
    common load path. With labels in data.test_path, each member's and the
    ensemble's metric are printed.
    """
    fitted = ensemble.expand(saved_models, rundir.runs_root(cfg))
    asked = saved_models
    if fitted is not None:  # an ensemble directory: its fold models, fitted weights and intercept
        if weights is not None:
            raise UserError(f"--weights: '{saved_models[0]}' is a fitted ensemble with its own weights; drop --weights")
        if fitted.symmetric != bool(cfg.inference.symmetric):
            raise UserError(
                f"inference.symmetric: '{saved_models[0]}' was fitted on out-of-fold predictions made "
                f"with inference.symmetric={str(fitted.symmetric).lower()}; predict the same way "
                f"(inference.symmetric={str(fitted.symmetric).lower()}), or fit it again with "
                f"python train.py --config <its config> --resume inference.symmetric="
                f"{str(cfg.inference.symmetric).lower()}"
            )
        print(f"--saved_model {saved_models[0]}: a fitted ensemble of {len(fitted.runs)} models")
        saved_models, weights, intercept = fitted.runs, fitted.weights, fitted.intercept
    else:
        weights, intercept = normalised_weights(weights, len(saved_models)), None
    table, test = read_inference_inputs(cfg, write)
    sources = [rundir.resolve_saved_model(name, rundir.runs_root(cfg)) for name in saved_models]
    # the runs (or the fitted ensemble) this submission is of: it is named after them and may replace
    # only a file written for them
    identity = written.models_identity(asked if fitted is not None else sources, rundir.runs_root(cfg))
    output = Path(cfg.inference.output_path) if cfg.inference.output_path else written.default_output(identity)
    writes_report = write and table.labels is not None and cfg.model.num_labels == 1
    replaces = False
    if write:
        replaces = check_inference_outputs(
            cfg, output, saved_models, sources, config_path, writes_report, identity, overwrite, switches
        )
    device = distributed.resolve_device(cfg.device)  # inference runs in one process
    predicted, tested = predict_members(cfg, sources, table, test, device, trust)

    num_labels = cfg.model.num_labels
    values = combine(predicted, weights, num_labels, intercept)
    bad = ~np.isfinite(values) if num_labels == 1 else np.zeros(len(values), dtype=bool)
    if bad.any():  # checked before clipping, which would turn inf into a plausible score
        first = table.ids[int(np.flatnonzero(bad)[0])]
        raise UserError(
            f"--saved_model {' '.join(saved_models)}: {int(bad.sum())} of {len(values)} predictions "
            f"are not finite (first id '{first}'); the model's outputs overflow or it diverged: try "
            "inference.precision=fp32, or check the checkpoint with python -m plaintune.checkpoint "
            "inspect"
        )
    columns = cfg.data.columns
    if write:
        rounded = postprocess(values, cfg.inference.clip, cfg.inference.round) if num_labels == 1 else values
        write_submission(
            cfg.data.submission_template,
            table.ids,
            rounded,
            output,
            columns.id,
            columns.target,
            cfg.data.encoding,
            integer=num_labels > 1,
        )
        written.mark(output, identity)
        print(f"{'replaced' if replaces else 'wrote'} {output} ({len(values)} predictions)")
        if writes_report:
            folder = output.with_name(report_folder_name(output.stem))
            print(write_error_report(folder, table, values, cfg.data.binary_threshold, models=identity))
    if test is not None:
        report_test_scores(cfg, saved_models, tested, weights, test, intercept)
    return pd.DataFrame({columns.id: table.ids, columns.target: values})


def predict_members(
    cfg: Box,
    sources: Sequence[Path],
    table: data.PairTable,
    test: Optional[data.PairTable],
    device: torch.device,
    trust: bool,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each member's outputs on the predict pairs and (if any) the test pairs, one model in memory at a time.

    When the test pairs are the predict pairs (a labelled file scored against itself), each model
    predicts them once.
    """
    predicted, tested = [], []
    loading = predicting = 0.0
    test_is_table = test is not None and same_pairs(test, table)
    both_orders = 0  # members that predicted each pair in both orders
    for source in sources:
        started = time.perf_counter()
        model, tokenizer, report = load_model_for_inference(cfg, source, trust)
        print(f"checkpoint: {report.summary()}")
        model.to(device)
        objective = objective_for(model, cfg, source)
        encoding = inference_encoding(cfg, model, objective, source)
        loading += time.perf_counter() - started
        started = time.perf_counter()
        predicted.append(
            member_outputs(model, tokenizer, objective, table, encoding, cfg, device, cfg.inference.symmetric)
        )
        predicting += time.perf_counter() - started  # tokenizing and predicting, not loading
        both_orders += predicts_both_orders(objective, cfg.inference.symmetric)
        if test_is_table:
            tested.append(predicted[-1])
        elif test is not None:
            tested.append(
                member_outputs(model, tokenizer, objective, test, encoding, cfg, device, cfg.inference.symmetric)
            )
        del model
    pairs = len(table)
    orders = (
        ""
        if not both_orders
        else " (both orders)"
        if both_orders == len(sources)
        else f" ({both_orders} of them in both orders)"
    )
    print(
        f"predicted {pairs} pairs with {len(sources)} model(s){orders} "
        f"in {predicting:.1f} s ({pairs * len(sources) / max(predicting, 1e-9):.1f} pairs/s per model, "
        f"{'%s (%s)' % inference_precision(cfg, device)}; loading took {loading:.1f} s)"
    )
    return predicted, tested


def same_pairs(first: data.PairTable, second: data.PairTable) -> bool:
    """Whether two tables hold the same sentence pairs in the same order (so one prediction serves both)."""
    return first.sentence_1 == second.sentence_1 and first.sentence_2 == second.sentence_2


def combine(
    outputs: list[np.ndarray], weights: Optional[Sequence[float]], num_labels: int, intercept: Optional[float] = None
) -> np.ndarray:
    """The (weighted) mean of the members' scores, or the class of the mean probabilities; with an
    `intercept` (a fitted ensemble), the weighted sum plus it."""
    if intercept is not None:
        return ensemble.apply(np.stack(outputs, axis=1), weights, intercept)
    mixed = np.average(np.stack(outputs), axis=0, weights=weights)
    return mixed if num_labels == 1 else mixed.argmax(axis=-1)


def report_test_scores(
    cfg: Box,
    saved_models: Sequence[str],
    tested: list[np.ndarray],
    weights: Optional[Sequence[float]],
    test: data.PairTable,
    intercept: Optional[float] = None,
) -> None:
    num_labels = cfg.model.num_labels

    def scores(predictions: np.ndarray) -> str:
        metrics = compute_metrics(predictions, test.labels, num_labels, test.binary, cfg.data.binary_threshold)
        return shown(metrics)

    if len(tested) > 1:
        for source, outputs in zip(saved_models, tested):
            print(f"  member {source}: test {scores(outputs if num_labels == 1 else outputs.argmax(axis=-1))}")
    label = "ensemble " if len(tested) > 1 else ""
    combined = scores(combine(tested, weights, num_labels, intercept))
    print(f"{label}test {combined}  ({cfg.data.test_path}, {len(test)} pairs)")

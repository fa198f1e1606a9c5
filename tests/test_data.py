"""Corpora, the BPE tokenizer and packing with document resets."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_model
from pararnn_hf.data import (
    PackedDataset,
    builtin_corpus,
    load_corpus,
    load_or_train_tokenizer,
    local_corpus,
    tokenize_documents,
    train_tokenizer,
)
from pararnn_hf.data.corpus import stdlib_files


@pytest.fixture(scope="module")
def stdlib_corpus():
    return builtin_corpus()


def test_builtin_corpus_is_the_stdlib_without_tests(stdlib_corpus):
    files = stdlib_files()
    assert len(files) > 300
    assert not any("site-packages" in f.parts or "test" in f.parts or f.name.startswith("test_") for f in files)
    size = sum(map(len, stdlib_corpus.train)) + sum(map(len, stdlib_corpus.validation))
    assert size > 5_000_000  # megabytes of real text
    share = len(stdlib_corpus.validation) / (len(stdlib_corpus.train) + len(stdlib_corpus.validation))
    assert 0.005 < share < 0.05


def test_builtin_split_is_deterministic_and_disjoint(stdlib_corpus):
    again = builtin_corpus()
    assert again.fingerprint() == stdlib_corpus.fingerprint()
    assert not set(stdlib_corpus.validation) & set(stdlib_corpus.train)


def test_local_corpus_reads_text_jsonl_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first document\nwith two lines")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# second")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "third"}) + "\n\n" + json.dumps({"text": "fourth"}) + "\n")
    corpus = load_corpus([str(tmp_path)])
    assert sorted(corpus.train + corpus.validation) == sorted(
        ["first document\nwith two lines", "# second", "third", "fourth"]
    )
    assert corpus.validation  # even a tiny corpus holds one document out


@pytest.mark.parametrize(
    "setup,error,match",
    [
        (lambda p: None, FileNotFoundError, "no such file or folder"),
        (lambda p: p.write_text("   \n"), ValueError, "is empty"),
        (lambda p: p.write_text("{not json}\n"), ValueError, "not valid JSON"),
        (lambda p: p.write_text('{"content": "x"}\n'), ValueError, 'string "text" field'),
    ],
)
def test_bad_local_corpora_raise(tmp_path, setup, error, match):
    path = tmp_path / "data.jsonl"
    setup(path)
    with pytest.raises(error, match=match):
        local_corpus([path])


def test_empty_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="holds no .txt"):
        local_corpus([tmp_path])


def test_uncached_hf_dataset_is_a_clear_error(tmp_path):
    # in a fresh process: the offline switches are read when datasets is first imported
    code = (
        "from pararnn_hf.data import load_corpus\n"
        "try:\n    load_corpus('hf:some-org/not-a-cached-dataset')\n"
        "except ValueError as err:\n    print(err)\n"
    )
    env = dict(os.environ, HF_HOME=str(tmp_path))
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "is not in the local Hugging Face cache" in out.stdout, out.stderr[-2000:]


def test_tokenizer_round_trips_text_exactly(stdlib_corpus):
    tok = train_tokenizer(stdlib_corpus.train[:60], vocab_size=1000)
    samples = stdlib_corpus.validation[:5] + ["naïve café ✓ — ünïcödé\ttabs  and   spaces\r\n", ""]
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.eos_token_id == 0 and tok.pad_token_id == 1


def test_tokenizer_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("PARARNN_HF_CACHE", str(tmp_path))
    corpus = local_corpus([__file__])
    first = load_or_train_tokenizer(corpus, vocab_size=300)
    cached = list((tmp_path / "tokenizers").iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()
    second = load_or_train_tokenizer(corpus, vocab_size=300)
    assert second.get_vocab() == first.get_vocab()
    with pytest.raises(ValueError, match="vocab_size must be at least 258"):
        train_tokenizer(["x"], vocab_size=100)


def test_packing_marks_document_starts():
    docs = [[5, 6, 7, 0], [8, 0], [9, 10, 11, 12, 13, 0]]
    ds = PackedDataset(docs, seq_len=4)
    assert len(ds) == 3
    assert ds.tokens.flatten().tolist() == [5, 6, 7, 0, 8, 0, 9, 10, 11, 12, 13, 0]
    assert ds.resets.flatten().tolist() == [1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0]  # window starts reset too
    assert ds.labels.flatten().tolist() == [-100, 6, 7, 0, -100, 0, -100, 10, 11, 12, 13, 0]
    item = ds[1]
    assert set(item) == {"input_ids", "labels", "resets"} and item["resets"].dtype == torch.bool


def test_packing_pads_the_last_window_for_evaluation():
    ds = PackedDataset([[1, 2, 3, 4, 5]], seq_len=4, pad_last=True, pad_id=9)
    assert ds.tokens.tolist() == [[1, 2, 3, 4], [5, 9, 9, 9]]
    assert ds.labels.tolist() == [[-100, 2, 3, 4], [5, -100, -100, -100]]
    assert ds.num_target_tokens == 3  # position 0 of a window is never a target


def test_keep_first_bounds_the_windows():
    ds = PackedDataset([list(range(3, 20))], seq_len=4, pad_last=True).keep_first(2)
    assert len(ds) == 2 and ds.labels.shape == ds.resets.shape == (2, 4)
    assert len(PackedDataset([list(range(3, 20))], seq_len=4).keep_first(None)) == 4


def test_packing_errors():
    with pytest.raises(ValueError, match="fewer than one sequence of seq_len=64"):
        PackedDataset([[1, 2, 3]], seq_len=64)
    with pytest.raises(ValueError, match="corpus is empty"):
        PackedDataset([], seq_len=8)
    with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
        PackedDataset([[1, 2]], seq_len=1)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_packed_loss_equals_documents_run_one_by_one(cell):
    """Summed token loss of packed windows with resets = summed loss of each document alone."""
    model = tiny_model(cell)
    torch.manual_seed(3)
    docs = [torch.randint(3, 300, (n,)).tolist() + [2] for n in (7, 3, 12, 5)]  # 31 tokens
    ds = PackedDataset(docs, seq_len=31)
    batch = ds[0]
    out = model(
        batch["input_ids"][None],
        labels=batch["labels"][None],
        resets=batch["resets"][None],
        num_items_in_batch=torch.tensor(1),
    )
    alone = sum(
        model(torch.tensor([d]), labels=torch.tensor([d]), num_items_in_batch=torch.tensor(1)).loss for d in docs
    )
    assert torch.allclose(out.loss, alone, rtol=1e-5)


def test_tokenize_documents_appends_eos(stdlib_corpus):
    tok = train_tokenizer(stdlib_corpus.train[:20], vocab_size=400)
    ids = tokenize_documents(tok, ["a = 1", "b"])
    assert [d[-1] for d in ids] == [tok.eos_token_id] * 2
    assert tok.decode(ids[0][:-1]) == "a = 1"


def test_hf_dataset_from_a_local_folder(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"train doc {i}"}) + "\n" for i in range(5)))
    (tmp_path / "validation.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    corpus = load_corpus(f"hf:{tmp_path}")
    assert corpus.train == [f"train doc {i}" for i in range(5)] and corpus.validation == ["held out"]


def test_local_split_does_not_depend_on_where_the_corpus_lies(tmp_path):
    for folder in ("a", "b/deeper"):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(60):
            (tmp_path / folder / f"doc{i}.txt").write_text(f"document {i}")
    one, two = load_corpus([str(tmp_path / "a")]), load_corpus([str(tmp_path / "b" / "deeper")])
    assert one.train == two.train and one.validation == two.validation
    assert one.fingerprint() == two.fingerprint()

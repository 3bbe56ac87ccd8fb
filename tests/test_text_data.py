"""Text loading and evaluation windows."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest

from butler_jax.eval.text_data import DATA_DIR, document_windows, load_documents, token_windows, wikitext2


def _scored(w) -> np.ndarray:
    return w.targets[w.loss_mask]


@pytest.mark.parametrize("n, context, stride", [(100, 16, 16), (100, 16, 4), (17, 16, 8), (5, 16, 16),
                                                 (161, 16, 5), (40, 8, 1)])
def test_every_target_scored_once_in_order(n, context, stride):
    ids = np.arange(1000, 1000 + n)
    w = token_windows(ids, context, stride, pad_id=-1)
    assert w.inputs.shape == w.targets.shape == w.loss_mask.shape and w.inputs.shape[1] == context
    assert _scored(w).tolist() == ids[1:].tolist() and w.num_scored == n - 1
    assert (w.targets[:, :-1][w.inputs[:, 1:] != -1] == w.inputs[:, 1:][w.inputs[:, 1:] != -1]).all()
    assert not (w.loss_mask & ((w.targets == -1) | (w.inputs == -1))).any()  # padding is never scored


def test_overlap_gives_history_and_max_windows():
    ids = np.arange(200)
    w = token_windows(ids, 32, 8)
    # a scored target in a later window has at least context - stride tokens before it in the window
    rows, cols = np.nonzero(w.loss_mask[1:])
    assert cols.min() == 32 - 8
    assert token_windows(ids, 32, 8, max_windows=3).inputs.shape == (3, 32)
    with pytest.raises(ValueError, match="stride must be in 1..context"):
        token_windows(ids, 32, 64)


def test_wikitext2_shipped_and_checksummed():
    text = wikitext2("test")
    assert text.startswith(" \n = Robert Boulter = \n")
    digest = hashlib.sha256((DATA_DIR / "wikitext-2-raw" / "wiki.test.raw").read_bytes()).hexdigest()
    assert digest == "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
    assert wikitext2("valid").startswith(" \n = Homarus gammarus = ")
    assert load_documents("wikitext2:valid") == [wikitext2("valid")]
    with pytest.raises(ValueError, match="choose one of test, valid"):
        wikitext2("train")


def test_local_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first doc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second doc")
    assert load_documents(tmp_path) == ["first doc", "second doc"]
    assert load_documents(tmp_path / "a.txt") == ["first doc"]
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x y"}) + "\n\n" + json.dumps({"text": "z"}) + "\n")
    assert load_documents(tmp_path / "d.jsonl") == ["x y", "z"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 1: every JSONL row needs a string field 'text'"):
        load_documents(tmp_path / "bad.jsonl")
    book = "header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe story.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense"
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "1.txt").write_text(book)
    assert load_documents(f"pg19:{tmp_path / 'pg'}") == ["The story."]
    with pytest.raises(FileNotFoundError, match="neither a file, a folder"):
        load_documents(tmp_path / "nope.txt")
    # one Gutenberg rule and one reader for training and evaluation
    from butler_jax.train.config import DataConfig
    from butler_jax.train.data import read_documents as train_documents

    assert list(train_documents(str(tmp_path / "pg"), DataConfig())) == load_documents(tmp_path / "pg")


def test_token_cap_stops_reading(tmp_path):
    from butler_jax.text_source import read_documents, take_tokens

    read = []

    def docs():
        for i in range(100):
            read.append(i)
            yield f"doc{i} " * 10
    encode = lambda ds: [list(d.encode()) for d in ds]  # noqa: E731
    ids = take_tokens(docs(), encode, max_tokens=150)
    assert sum(map(len, ids)) == 150 and len(read) == 3  # 50 bytes a document: the third is cut, no fourth read
    assert next(read_documents("wikitext2:valid")).startswith(" \n = Homarus gammarus")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_what_to_install(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ModuleNotFoundError, match="pip install pyarrow"):
        load_documents(tmp_path / "t.parquet")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hub_without_datasets_says_what_to_do():
    with pytest.raises(ModuleNotFoundError, match="pip install datasets.*local file"):
        load_documents("hf:Salesforce/wikitext:wikitext-2-raw-v1:test")


def test_document_windows_with_tokenizer(smollm2_tok):
    text = wikitext2("test")[:20_000]
    w = document_windows(smollm2_tok, [text], context=256, stride=128)
    ids = smollm2_tok.encode(text)
    assert w.inputs.shape[1] == 256 and _scored(w).tolist() == ids[1:]
    assert w.inputs[0].tolist() == ids[:256]


def test_eval_text_prefix_reads_no_document_past_it(tmp_path, files_read):
    """eval.ppl_windows > 0 uses a prefix of the source: a folder (or a hub stream) is read only that far."""
    from butler_jax.eval.cli import read_text_source

    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"document {i} " * 20)  # 220 characters each
    whole = read_text_source(str(tmp_path))
    assert len(files_read) == 5 and whole.count("\n\n") == 4
    files_read.clear()
    assert read_text_source(str(tmp_path), max_chars=300) == whole[:300] and files_read == ["0.txt", "1.txt"]
    assert read_text_source("wikitext2-test", max_chars=50) == read_text_source("wikitext2-test")[:50]

"""The bundled tasks' data loaders and the generation task's metrics (computed locally: no
metric or data downloads). lm-eval imports this file from the folder the YAMLs are in."""

import difflib
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def _test_split(name):
    import datasets

    return {"test": datasets.load_dataset("json", data_files={"test": str(DATA / name)}, split="test")}


# lm-eval calls these with the task's metadata as keyword arguments
def stdlib_complete(**kwargs):
    return _test_split("stdlib_complete.jsonl")


def stdlib_nextline(**kwargs):
    return _test_split("stdlib_nextline.jsonl")


def stdlib_ppl(**kwargs):
    return _test_split("stdlib_ppl.jsonl")


def process_completion(doc, results):
    generated = results[0].split("\n", 1)[0].rstrip()
    target = doc["target"].rstrip()
    return {
        "exact_match": float(generated == target),
        "char_similarity": difflib.SequenceMatcher(None, generated, target).ratio(),
    }

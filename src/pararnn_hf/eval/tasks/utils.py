"""Metrics of the bundled generation task (computed locally: no metric downloads)."""

import difflib


def process_completion(doc, results):
    generated = results[0].split("\n", 1)[0].rstrip()
    target = doc["target"].rstrip()
    return {
        "exact_match": float(generated == target),
        "char_similarity": difflib.SequenceMatcher(None, generated, target).ratio(),
    }

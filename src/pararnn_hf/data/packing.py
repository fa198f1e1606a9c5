"""Documents packed into fixed-length training sequences with document resets.

Documents (each followed by EOS) are concatenated and cut into windows of ``seq_len``
tokens. ``resets`` is True where a document starts, so neither the recurrence nor the conv
carries state across documents, and the label of a document's first token is -100, so no
token is predicted from the previous document: the loss of a packed batch equals the loss of
its documents run one by one.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def tokenize_documents(tokenizer, documents: list[str], batch_size: int = 256) -> list[list[int]]:
    """Token ids of each document with EOS appended."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; packing needs one to end documents")
    out: list[list[int]] = []
    for i in range(0, len(documents), batch_size):
        enc = tokenizer(documents[i : i + batch_size], add_special_tokens=False)["input_ids"]
        out.extend(ids + [eos] for ids in enc)
    return out


class PackedDataset(Dataset):
    """Fixed-length windows over the concatenated documents.

    ``pad_last`` keeps the final partial window, padded with ``pad_id`` and labels -100 (for
    evaluation: every token counts); otherwise it is dropped (training).
    """

    def __init__(self, documents: list[list[int]], seq_len: int, pad_last: bool = False, pad_id: int = 0):
        if not isinstance(seq_len, int) or seq_len < 2:
            raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
        lengths = [len(d) for d in documents if d]
        if not lengths:
            raise ValueError("no tokens to pack: the corpus is empty")
        tokens = torch.tensor([t for d in documents if d for t in d], dtype=torch.long)
        starts = torch.zeros(len(tokens), dtype=torch.bool)
        starts[torch.tensor([0] + lengths[:-1]).cumsum(0)] = True
        n_full, rest = divmod(len(tokens), seq_len)
        if pad_last and rest:
            pad = seq_len - rest
            tokens = torch.cat([tokens, torch.full((pad,), pad_id, dtype=torch.long)])
            starts = torch.cat([starts, torch.zeros(pad, dtype=torch.bool)])
            self.padding = pad
            n_full += 1
        else:
            self.padding = 0
        if n_full == 0:
            raise ValueError(
                f"the corpus has {len(tokens)} tokens, fewer than one sequence of seq_len={seq_len}; "
                "lower the sequence length or add data"
            )
        self.seq_len = seq_len
        self.tokens = tokens[: n_full * seq_len].view(n_full, seq_len)
        self.resets = starts[: n_full * seq_len].view(n_full, seq_len).clone()
        self.resets[:, 0] = True  # every window starts from the zero state
        self.labels = self.tokens.clone()
        self.labels[starts[: n_full * seq_len].view(n_full, seq_len)] = -100
        if self.padding:
            self.labels[-1, seq_len - self.padding :] = -100

    def keep_first(self, n: int | None) -> PackedDataset:
        """Keep only the first ``n`` windows (all when ``n`` is None), e.g. to bound evaluation."""
        if n is not None:
            self.tokens, self.labels, self.resets = self.tokens[:n], self.labels[:n], self.resets[:n]
        return self

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.labels[i], "resets": self.resets[i]}

    @property
    def num_target_tokens(self) -> int:
        # HF shifts labels by one: position 0 of each window is never a target
        return int((self.labels[:, 1:] != -100).sum())

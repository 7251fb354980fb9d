"""Text classification batches for a Hugging Face sequence classifier (configs/model/distilbert_cls.yaml).

Each sample is what a tokenizer with `padding="max_length"` gives: `input_ids` padded to `seq_len` with 0, an
`attention_mask` of ones over the real tokens and zeros over the padding, and a class label. The default
DataLoader collation makes a batch `{input_ids [B, seq_len], attention_mask [B, seq_len], labels [B]}`; the
default step calls `model(**batch)` and uses the `.loss` the model computes from `labels`. tokens/s counts
the real tokens (the mask's sum), not the padding. Nothing is downloaded.

    model=distilbert_cls data=text_cls    (configs/model/distilbert_cls.yaml, configs/data/text_cls.yaml)
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

PAD_ID = 0


class RandomText(Dataset):
    """`num_samples` token sequences of random length (min_length to seq_len) with a label the tokens decide
    (whether most of them are in the lower half of the vocabulary), so the classifier can learn it.

    Takes `seq_len`, `vocab_size` (from model.seq_len and model.vocab_size, which the model preset also gives
    the model) and `seed` (data.seed) from trainer_tune; the rest come from data.kwargs. Sample i is the same in
    every trial.
    """

    def __init__(self, *, seq_len: int, vocab_size: int, seed: int, num_samples: int = 1024, min_length: int = 8,
                 num_labels: int = 2) -> None:
        if not 1 <= min_length <= seq_len:
            raise ValueError(f"min_length={min_length} must be in [1, seq_len={seq_len}]")
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.seed = seed
        self.num_samples = num_samples
        self.min_length = min_length
        self.num_labels = num_labels

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} of {self.num_samples}")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        length = int(torch.randint(self.min_length, self.seq_len + 1, (), generator=generator))
        tokens = torch.randint(PAD_ID + 1, self.vocab_size, (length,), generator=generator)
        input_ids = torch.full((self.seq_len,), PAD_ID, dtype=torch.long)
        input_ids[:length] = tokens
        attention_mask = torch.zeros(self.seq_len, dtype=torch.long)
        attention_mask[:length] = 1
        low_share = (tokens < self.vocab_size // 2).float().mean()
        label = min(int(low_share * self.num_labels), self.num_labels - 1)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor(label)}

"""Worked examples of user code that trainer_tune tunes through `_target_` (docs/your-model.md).

Nothing in trainer_tune imports these; they show the contracts: `models` a plain nn.Module and a Hugging Face
GPT-2 factory, `batches` a batch source, `losses` a loss. Copy one into your own package and point the
`_target_` at your copy.
"""

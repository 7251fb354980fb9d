"""Worked examples of user code that trainer_tune tunes through `_target_` (docs/your-model.md).

Nothing in trainer_tune imports these; they show the contracts: `vision` an image classifier (a ResNet-style CNN
and a map-style Dataset of images), `text` batches for a Hugging Face sequence classifier (padded, masked),
`contrastive` a model with two inputs and the step function it needs, `models` a plain language model and a
Hugging Face GPT-2 factory, `batches` a batch source of token ids, `losses` a loss. Copy one into your own
package and point the `_target_` at your copy.
"""

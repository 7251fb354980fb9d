"""What is trained: everything that decides how your model is called, in one place.

- model.py: the built-in GPT and `build_model` (or `model._target_`);
- nsa_attention.py, nsa_stats.py: the native-sparse-attention layer and its auxiliary statistics;
- data.py: batch sources (built-in token streams, or `data._target_`: an iterable, a DataLoader or a Dataset);
- batch.py: what a batch may be (tensor, tuple, dict), moving it to the device, counting its samples and tokens;
- step.py: one micro-step's loss from a batch (`step._target_`, or the default rules per batch type);
- loss.py: the loss function (`loss._target_`, cross-entropy by default);
- targets.py: importing, checking and instantiating every `_target_`, with one-line errors.
"""

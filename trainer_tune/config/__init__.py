"""Typed configuration: the schema registered with Hydra, the knob flags of a setting, the key reference.

The bottom of the house: every other package may import it, it imports none of them."""

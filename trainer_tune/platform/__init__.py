"""What every stage runs on: the distributed session (the one module that touches process groups and the rank
environment), fault injection, durable writes, non-finite cleaning, logging and unit wording.

Imports only trainer_tune.config."""

"""The run directory: the one home of what is written to and read from a run.

``checkpoint``: the Orbax checkpoint store of a training (epoch and best managers, collective
saves, SHA-256 manifests, resume from the newest checkpoint that verifies).
``loading``: a checkpoint (a run directory, ``RUN/best``, a step directory) back into a model
with its config and metadata; training (``init_from``, the ``augment`` method, resume) and every
evaluator load runs through it.
"""

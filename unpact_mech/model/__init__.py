"""Models: the :class:`~unpact_mech.model.subject.Subject` wrapper over a backend (TransformerLens bridge, plain
transformers, nnsight), and loading by spec (``loading``: built-in offline names, local directories, hub ids)."""

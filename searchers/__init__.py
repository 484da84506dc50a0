"""Search strategies behind one Optuna sampler interface (see issue: searchers)."""

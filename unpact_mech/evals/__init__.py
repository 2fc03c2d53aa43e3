"""Evaluation: probe sets by name (``loaders``), correctness criteria, metrics (ours and open-unlearning's),
multiple-choice scoring as lm-eval scores it, and the benchmark tasks (TOFU, WMDP, MUSE) built on them."""

"""One module per chapter topic: the experiments the chapters run, built on models, kernels and training."""

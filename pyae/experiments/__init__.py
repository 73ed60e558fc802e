"""The lecture's experiments. Each module has ``run_experiment(out_dir, *, quick, device, seed,
progress, num_threads)``, which writes ``results.json``, ``report.md`` and its pictures into
one directory, and ``format_table(results)``; each is a subcommand of ``pyae experiment``:

- :mod:`pyae.experiments.mnist` (the default): which autoencoder learns the most useful
  features of MNIST (features + logistic regression), and what its filters look like
  (measured by :mod:`pyae.experiments.filters`).
- :mod:`pyae.experiments.contractive`: the contractive autoencoder stays sensitive along the
  data's main direction and becomes insensitive across it (the link to PCA).
- :mod:`pyae.experiments.patches`: denoising autoencoders on natural image patches.

Every report states what its run measured, never fixed text about what should happen. They
need the optional dependencies: ``pip install 'pyae[experiment]'`` (matplotlib, scikit-learn,
tqdm).
"""

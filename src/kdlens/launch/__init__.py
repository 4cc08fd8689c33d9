"""Launchers for ``kdlens sweep``: where the runs of a sweep train.

``local`` (:class:`kdlens.training.sweep.LocalLauncher`) trains them one after another in the
sweep's own process; :class:`~kdlens.launch.pool.PoolLauncher` runs N at a time, each in a worker
process of its own; :class:`~kdlens.launch.slurm.SlurmLauncher` submits one Slurm job per run
through submitit (``pip install 'kdlens[cluster]'``). Each run trains through
:func:`kdlens.launch.job.train_run`, which resumes from last.ckpt, skips a finished run and leaves
one held by another process to it.
"""

LAUNCHERS = ("local", "pool", "slurm")

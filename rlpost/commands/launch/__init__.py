"""Getting a run onto a cluster: Ray Jobs submission, SLURM scripts, KubeRay RayJobs.

``rlpost.commands.launch.cli.add_cli`` adds ``submit``, ``jobs``, ``plan`` and ``launch`` to the ``rlpost``
command; the placement plan itself lives in ``rlpost.runtime.placement``.
"""

"""Process plumbing: how this process was launched (single, ``--shard``, SLURM array, torchrun), the
torchrun process group and its work queue, the thread count, and the allocator setting. The engine
(harness.evaluation) composes them; nothing here knows about tasks, models or results."""

"""Running evaluations: demo sampling, prompts, ranking, the runner and sweep, launch and merge, scoring."""

"""What runs beside the inference engine: rollout actors, rewards, tasks, weight receiving."""

"""Ray actor groups: rollout (vLLM), learners (DeepSpeed), frozen models, rewards, placement."""

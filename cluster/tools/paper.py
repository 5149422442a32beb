"""The 2-GRPO paper's published figures that duet's reports and projections compare against.

Wu et al. 2025, "It Takes Two: Your GRPO Is Secretly DPO", arXiv 2510.00977 (v3).
"""

SOURCE = ("Wu et al. 2025, arXiv 2510.00977 (v3): 2-GRPO keeps 97.6% of 16-GRPO's accuracy "
          "using 1/8 of the rollouts and ~21% of the training time")
ACCURACY_RATIO = 0.976
"""2-GRPO's Mean@32 over 16-GRPO's, averaged over the paper's settings."""
TIME_RATIO = 0.21
"""2-GRPO's training hours over 16-GRPO's (10.23 h / 48.81 h)."""
HOURS = {2: 2.05, 16: 8.53}
"""Training hours, Qwen2.5-Math-1.5B on MATH, 4 GPUs, by group size."""
STEPS = {2: 293, 16: 2344}
"""Steps of that schedule: 10 epochs of 7.5k prompts at 256 x 2 and 32 x 16."""

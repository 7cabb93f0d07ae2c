"""One SPIN iteration = one Ray Job: the controller (`controller.run_iteration`) and its stages.

generate   Ray Data streams prompts to the generator (Serve + vLLM)      generate.py, data.py
score      reference log-probs, by the trainer's own forward pass       score.py, train_step.py
train      Ray Train workers, FSDP2, on the pairs                       train.py (driver), train_loop.py (workers),
                                                                        train_step.py (the update), train_eval.py
publish    the generator moves to the new model in place                controller.py
evaluate   the generator's greedy answers to the held-out prompts        evaluate.py
"""

from jobs.iteration.controller import run_iteration

__all__ = ["run_iteration"]

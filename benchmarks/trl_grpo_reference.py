"""Reference side of the end-to-end comparison with TRL: TRL GRPOTrainer on SmolLM2-135M-Instruct,
16 prompts x 8 generations, <= 32 new tokens, fp32, 4 optimizer steps per generation batch, DAPO loss.
Usage: python trl_grpo_reference.py MODEL_DIR OUT_DIR   (MODEL_DIR: the model as a local HF folder)
Prints JSON with per-step times and the total train() time. Run ercref on the same workload
in the same sitting and report the ratio (benchmarks/bench_e2e_trl.py does both).
Optional third argument "nockpt" turns TRL's default gradient checkpointing off (its best CPU setting)."""
import json
import random
import re
import sys
import time

from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

random.seed(0)
rows = []
for _ in range(256):
    a, b = random.randint(1, 9), random.randint(1, 9)
    rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}? Answer with just the number."}],
                 "answer": str(a + b)})
ds = Dataset.from_list(rows)


def reward(completions, answer, **kw):
    out = []
    for c, a in zip(completions, answer, strict=True):
        text = c[0]["content"] if isinstance(c, list) else c
        nums = re.findall(r"-?\d+", text)
        out.append(1.0 if nums[:1] == [a] else 0.0)
    return out


class StepTimer(TrainerCallback):
    def __init__(self):
        self.t = None
        self.times = []

    def on_step_begin(self, args, state, control, **kw):
        self.t = time.time()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.time() - self.t)


cb = StepTimer()
cfg = GRPOConfig(
    output_dir=sys.argv[2], per_device_train_batch_size=32, num_generations=8,
    max_completion_length=32, learning_rate=1e-6, max_steps=4, logging_steps=1, report_to=[], use_cpu=True,
    steps_per_generation=4, num_iterations=1, loss_type="dapo", epsilon_high=0.28, save_strategy="no", bf16=False,
    **({"gradient_checkpointing": False} if sys.argv[3:] == ["nockpt"] else {}))
tr = GRPOTrainer(model=sys.argv[1], reward_funcs=reward, args=cfg, train_dataset=ds, callbacks=[cb])
t = time.time()
tr.train()
total = time.time() - t
print(json.dumps({"step_times": cb.times, "total": total}))

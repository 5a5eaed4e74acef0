"""The authors' recipe mechanics on the tiny model (seconds each): dynamic sampling with refill
(generate, keep the groups whose rewards vary, generate again until the batch is full, capped),
left truncation of long prompts, the evaluation schedule, and named evaluation sets that are not
training prompts (the authors' AIME files: verl JSON Lines, bare problems).

Rewards are replaced by a rule on the prompt (``_fake_score``) where a test needs to know which
groups vary: the random tiny model gets every answer wrong, and a rule makes the kept groups known
in advance without depending on one sampled trajectory."""
import math
import warnings

import pytest
import torch

import ercref.lm.trainer as trainer_module
from ercref.lm.config import AUTHORS_EVAL_FILES, PRESETS, DataConfig, make_config
from ercref.lm.data import FIXTURE_DIR, load_task, read_rows, write_jsonl
from ercref.lm.metrics_log import read_log, strip_timing
from ercref.lm.models import apply_chat_template, build_tiny_model
from ercref.lm.rollout import encode_prompts, response_logprobs, rollout
from ercref.lm.trainer import Callback, Trainer, concat_rollouts

# 4 prompts x 4 samples per step, 2 minibatches of 2 prompts; no warm-up (a random model)
BASE = ["sft.steps=0", "rollout.prompts_per_step=4", "rollout.group_size=4", "train.minibatch_prompts=2",
        "rollout.max_new_tokens=3", "train.progress=false", "train.plot=false", "train.save_policy=false",
        "data.num_eval=4", "train.eval_k=2"]
DS = ["advantage.dynamic_sampling=true"]


def _operand(prompt) -> int:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return int(text.split("+")[0])


def _fake_score(varied, accuracy_flat: bool = False):
    """Trainer.score replacement: a group varies (one sample rewarded) when varied(prompt) holds,
    otherwise every sample gets 0. accuracy_flat: varied groups get rewards -1 / -0.5 with no
    correct sample (rewards vary, accuracy does not)."""

    def score(self, batch, max_new_tokens):
        G = self.cfg.rollout.group_size
        r = torch.zeros(len(batch.texts))
        for g in range(len(batch.texts) // G):
            if varied(batch.prompts[g * G]):
                r[g * G] = -0.5 if accuracy_flat else 1.0
        if accuracy_flat:
            r = torch.where(r == 0, torch.full_like(r, -1.0), r)
            return r, torch.zeros_like(r, dtype=torch.bool)
        return r, r > 0

    return score


class _Trained(Callback):
    """The prompts of every trained group, per step, in minibatch order."""

    def __init__(self):
        self.prompts = []

    def on_minibatch_start(self, trainer, minibatch, advantages, staleness):
        self.prompts += minibatch.prompts[:: trainer.cfg.rollout.group_size]


def _stream(tr: Trainer, n: int) -> list:
    """The first n prompts of the trainer's data stream (cursor restored)."""
    saved, tr.cursor = tr.cursor, 0
    out = [r["prompt"] for r in tr.next_prompts(n)]
    tr.cursor = saved
    return out


# ----------------------------------------------------------------------------- dynamic sampling
def test_dynamic_sampling_refills_until_the_batch_is_full_in_stream_order(tmp_path, monkeypatch):
    """Rounds of gen_batch_prompts prompts until prompts_per_step groups vary: the step trains on
    exactly the first 4 varied groups of the stream, generated in the fewest rounds, the cursor
    advanced by every generated prompt, and the counts are logged. The one minibatch (staleness 0)
    spans the rounds (rows joined by concat_rollouts) and its recomputed log-probs equal the old ones."""
    varied = lambda p: _operand(p) % 3 == 0  # noqa: E731  a in {0, 3, 6, 9}: 4 of 10 operands
    monkeypatch.setattr(Trainer, "score", _fake_score(varied))
    cb = _Trained()
    cfg = make_config("cpu-tiny", overrides=BASE + DS + ["advantage.gen_batch_prompts=3", "advantage.max_gen_batches=50",
                                                         "train.steps=1", "train.minibatch_prompts=4"])
    tr = Trainer(cfg, tmp_path, callbacks=[cb])
    rec = tr.train_step()
    stream = _stream(tr, 300)
    flags = [varied(p) for p in stream]
    assert sum(flags[:3]) < 4  # this seed's stream needs more than one round (else the test proves nothing)
    rounds = next(r for r in range(1, 101) if sum(flags[: 3 * r]) >= 4)
    expect = [p for p, f in zip(stream[: 3 * rounds], flags) if f][:4]
    assert cb.prompts == expect and 3 * (rounds - 1) <= stream.index(expect[-1])  # the last round contributed
    assert rec["batch/kept_groups"] == 4 and rec["batch/minibatches"] == 1
    assert rec["batch/gen_rounds"] == rounds and rec["batch/gen_prompts"] == 3 * rounds == tr.cursor
    mbs = read_log(tr.log.path, "minibatch")
    assert mbs[0]["staleness"] == 0 and mbs[0]["logp/max_abs_diff_old"] < 1e-5
    assert rec["reward/mean"] == pytest.approx(sum(flags[: 3 * rounds]) / (3 * rounds * 4))  # over all generated


def test_dynamic_sampling_after_the_cap_trains_on_what_it_kept(tmp_path, monkeypatch):
    """max_gen_batches rounds and still short: the step trains on the varied groups it has (fewer
    minibatches), and logs how many it kept; one round with enough varied groups keeps only the
    first prompts_per_step of them (the authors' 256 -> 128)."""
    varied = lambda p: _operand(p) == 0  # noqa: E731  1 of 10 operands
    monkeypatch.setattr(Trainer, "score", _fake_score(varied))
    cfg = make_config("cpu-tiny", overrides=BASE + DS + ["advantage.gen_batch_prompts=8", "advantage.max_gen_batches=2",
                                                         "train.steps=1"])
    cb = _Trained()
    tr = Trainer(cfg, tmp_path / "short", callbacks=[cb])
    rec = tr.train_step()
    kept = [p for p in _stream(tr, 16) if varied(p)]
    assert 0 < len(kept) < 4  # this seed's stream: short after the cap (else the test proves nothing)
    assert rec["batch/gen_rounds"] == 2 and rec["batch/gen_prompts"] == 16 == tr.cursor
    assert rec["batch/kept_groups"] == len(kept) and rec["batch/minibatches"] == math.ceil(len(kept) / 2)
    assert cb.prompts == kept

    monkeypatch.setattr(Trainer, "score", _fake_score(lambda p: True))  # every group varies
    cb = _Trained()
    tr = Trainer(make_config("cpu-tiny", overrides=BASE + DS + ["advantage.gen_batch_prompts=8", "train.steps=1"]),
                 tmp_path / "full", callbacks=[cb])
    rec = tr.train_step()
    assert rec["batch/gen_rounds"] == 1 and rec["batch/gen_prompts"] == 8 and rec["batch/kept_groups"] == 4
    assert cb.prompts == _stream(tr, 4)


@pytest.mark.parametrize("metric", ["reward", "accuracy"])
def test_dynamic_sampling_metric_reward_or_accuracy(tmp_path, monkeypatch, metric):
    """Groups whose rewards vary (-1 / -0.5: a missing </think>) but whose accuracy does not (all
    wrong) are kept by the reward metric and dropped by the authors' accuracy metric."""
    monkeypatch.setattr(Trainer, "score", _fake_score(lambda p: _operand(p) % 2 == 0, accuracy_flat=True))
    cfg = make_config("cpu-tiny", overrides=BASE + DS + [f"advantage.dynamic_sampling_metric={metric}", "train.steps=1"])
    rec = Trainer(cfg, tmp_path).train_step()
    assert rec["batch/gen_rounds"] == 1
    if metric == "accuracy":
        assert rec["batch/kept_groups"] == 0 and rec["batch/minibatches"] == 0
    else:
        assert rec["batch/kept_groups"] > 0


def test_refilled_run_resumes_exactly(tmp_path, monkeypatch):
    """A run with refill stopped after its step-2 checkpoint and resumed gives the same log and
    weights as the uninterrupted run: every round's prompts and samples come back (cursor, RNG)."""
    monkeypatch.setattr(Trainer, "score", _fake_score(lambda p: _operand(p) % 3 == 0))
    over = BASE + DS + ["advantage.gen_batch_prompts=3", "advantage.max_gen_batches=4", "train.save_every=1",
                        "train.eval_every=1", "train.eval_before_training=false"]
    full = Trainer(make_config("cpu-tiny", overrides=over + ["train.steps=3"]), tmp_path / "full")
    full.fit()
    Trainer(make_config("cpu-tiny", overrides=over + ["train.steps=2"]), tmp_path / "part").fit()
    part = Trainer(make_config("cpu-tiny", overrides=over + ["train.steps=3"]), tmp_path / "part", resume=True)
    assert part.resumed_from is not None and part.step == 2
    part.fit()
    a = [strip_timing(r) for r in read_log(tmp_path / "full" / "metrics.jsonl")]
    b = [strip_timing(r) for r in read_log(tmp_path / "part" / "metrics.jsonl")]
    assert a == b and max(r["batch/gen_rounds"] for r in a if r["kind"] == "step") > 1
    assert full.cursor == part.cursor
    for (n, p), q in zip(full.model.named_parameters(), part.model.parameters()):
        assert torch.equal(p, q), n


def test_concat_rollouts_keeps_every_row_exact():
    """Two rollouts with different prompt and response widths, concatenated: each row's tokens,
    masks and old log-probs are kept, and a forward over the re-padded batch reproduces the old
    log-probs and entropies within 1e-5 (positions skip the extra left padding)."""
    model, tok = build_tiny_model(seed=0)
    torch.manual_seed(0)
    b1 = rollout(model, tok, ["1+1="], ["2"], 2, 2)
    b2 = rollout(model, tok, ["123+456=", "7+8="], ["579", "15"], 2, 6)
    assert b1.prompt_len != b2.prompt_len and b1.response_mask.shape[1] != b2.response_mask.shape[1]
    c = concat_rollouts([b1, b2], tok.pad_token_id)
    assert c.sequences.shape[0] == 6 and c.texts == b1.texts + b2.texts and c.answers == b1.answers + b2.answers
    assert c.response_lengths.tolist() == b1.response_lengths.tolist() + b2.response_lengths.tolist()
    for rows, b in ((slice(0, 2), b1), (slice(2, 6), b2)):
        kept = c.sequences[rows][c.attention_mask[rows].bool()]
        assert torch.equal(kept, b.sequences[b.attention_mask.bool()])
    with torch.no_grad():
        lp, ent = response_logprobs(model, c.sequences, c.attention_mask, c.prompt_len, 1.0)
    m = c.response_mask
    assert torch.allclose(lp[m], c.old_logp[m], atol=1e-5) and torch.allclose(ent[m], c.old_entropy[m], atol=1e-5)
    assert (c.old_logp[~m] == 0).all()


# ----------------------------------------------------------------------------- left truncation
def test_long_prompts_are_truncated_on_the_left_with_a_warning_counting_them():
    """Prompts over max_prompt_tokens keep their LAST tokens (the end of the chat template, which
    opens the answer, survives); one warning counts the distinct prompts cut; shorter prompts are
    encoded exactly as without a limit."""
    _, tok = build_tiny_model(seed=0)
    prompts = ["1+1=", "123456789+987654321=", "2+2=", "123456789+987654321="]
    full = [tok(apply_chat_template(tok, p, require=True), add_special_tokens=False)["input_ids"] for p in prompts]
    limit = len(full[0]) + 3
    assert len(full[1]) > limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, am = encode_prompts(tok, prompts, limit, "cpu")
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and msgs[0].startswith("1 of 3 distinct prompts") and "data.max_prompt_tokens" in msgs[0]
    assert ids.shape == (4, limit)
    for i, row in enumerate(full):
        kept = ids[i][am[i].bool()].tolist()
        assert kept == row[-limit:]  # left truncation: the tail is kept
    assert tok.decode(ids[1][-3:]) == tok.decode(full[1][-3:])  # the template's answer opening survives
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing cut: no warning
        ids2, _ = encode_prompts(tok, prompts[:1] + prompts[2:3], limit, "cpu")
    assert ids2[0].tolist()[-len(full[0]):] == full[0]


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("before", [False, True])
def test_eval_schedule_every_n_steps_and_optional_before_training(tmp_path, before):
    cfg = make_config("cpu-tiny", overrides=BASE + ["train.steps=5", "train.eval_every=2", "train.save_checkpoints=false",
                                                    f"train.eval_before_training={str(before).lower()}"])
    tr = Trainer(cfg, tmp_path)
    tr.fit()
    assert [e["step"] for e in read_log(tr.log.path, "eval")] == ([0] if before else []) + [2, 4, 5]


def _verl_file(path, prompts_answers):
    rows = [{"data_source": "test", "prompt": [{"role": "user", "content": p}],
             "reward_model": {"style": "rule", "ground_truth": a}} for p, a in prompts_answers]
    return write_jsonl(rows, path)


def test_named_eval_sets_bare_prompts_and_per_set_metrics(tmp_path, monkeypatch):
    """data.eval_paths: the authors' AIME format (JSON Lines in .json, bare problems) and another
    file, each tagged with its name, none a training prompt; the prompt the model sees is the bare
    problem; evaluate() logs eval/<name>/avg@k and pass@k per set, and eval/avg@k pooled."""
    train_file = _verl_file(tmp_path / "train.jsonl", [(f"{a}+{b}=", str(a + b)) for a in range(5) for b in range(5)])
    held = _verl_file(tmp_path / "held.jsonl", [("7+8=", "15"), ("9+9=", "18")])
    aime = FIXTURE_DIR / "aime_verl_sample.json"
    cfg = make_config("cpu-tiny", overrides=BASE + ["data.task=verl", f"data.path={train_file}",
                                                    f'data.eval_paths={{"aime": "{aime}", "held": "{held}"}}'])
    tr = Trainer(cfg, tmp_path / "run")
    problems = [row["prompt"][0]["content"] for _, row in read_rows(aime)]
    assert [r.get("eval_set") for r in tr.eval_set] == ["aime"] * 3 + ["held"] * 2
    assert [r["prompt"] for r in tr.eval_set[:3]] == [[{"role": "user", "content": p}] for p in problems]
    train_prompts = {r["prompt"][0]["content"] for r in tr.train_set}
    assert not train_prompts & {r["prompt"][0]["content"] for r in tr.eval_set} and len(tr.train_set) == 25
    seen = []
    real = trainer_module.rollout

    def spy(model, tok, prompts, *a, **kw):
        seen.extend(prompts)
        return real(model, tok, prompts, *a, **kw)

    monkeypatch.setattr(trainer_module, "rollout", spy)   # the evaluation's generation (Trainer.sample_responses)
    # correct: every sample of "How many positive divisors..." (aime) and of "9+9=" (held)
    monkeypatch.setattr(Trainer, "score", lambda self, b, n: (torch.tensor([float(a in ("24", "18")) for a in b.answers]),
                                                              torch.tensor([a in ("24", "18") for a in b.answers])))
    rec = tr.evaluate()
    rendered = apply_chat_template(tr.tok, seen[0], require=True)
    assert rendered.count(problems[0]) == 1 and "boxed" not in rendered and "step by step" not in rendered
    assert rendered == apply_chat_template(tr.tok, [{"role": "user", "content": problems[0]}], require=True)
    assert rec["eval/aime/avg@2"] == pytest.approx(1 / 3) and rec["eval/aime/pass@2"] == pytest.approx(1 / 3)
    assert rec["eval/held/avg@2"] == pytest.approx(1 / 2) and rec["eval/aime/prompts"] == 3
    assert rec["eval/avg@2"] == pytest.approx(2 / 5) and rec["eval/prompts"] == 5
    assert read_log(tr.log.path, "eval")[-1]["eval/held/pass@2"] == pytest.approx(1 / 2)


def test_real_task_without_eval_file_holds_out_its_first_records(tmp_path):
    train_file = _verl_file(tmp_path / "train.jsonl", [(f"{a}+1=", str(a + 1)) for a in range(10)])
    train, eval_ = load_task(DataConfig(task="verl", path=str(train_file), num_eval=3))
    assert [r["answer"] for r in eval_] == ["1", "2", "3"] and len(train) == 7
    assert not {r["answer"] for r in train} & {r["answer"] for r in eval_}
    with pytest.raises(ValueError, match="data.num_eval"):
        load_task(DataConfig(task="verl", path=str(train_file), num_eval=10))


def test_eval_files_resolve_from_the_repo_and_a_missing_one_says_how_to_get_it(tmp_path, monkeypatch):
    train_file = _verl_file(tmp_path / "train.jsonl", [(f"{a}+1=", str(a + 1)) for a in range(10)])
    monkeypatch.chdir(tmp_path)  # a relative path not found here is looked up in the repository root
    _, eval_ = load_task(DataConfig(task="verl", path=str(train_file),
                                    eval_paths={"aime": "data/fixtures/aime_verl_sample.json"}))
    assert len(eval_) == 3 and {r["eval_set"] for r in eval_} == {"aime"}
    with pytest.raises(ValueError, match=r"data.eval_paths.aime24: .*does not exist.*Kwai-Klear/ERC"):
        load_task(DataConfig(task="verl", path=str(train_file), eval_paths=dict(AUTHORS_EVAL_FILES) | {
            "aime24": "data/aime/nowhere.json"}))


def test_eval_and_dynamic_sampling_fields_are_validated():
    with pytest.raises(ValueError, match="data.eval_paths"):
        make_config("cpu-tiny", overrides=['data.eval_paths={"a/b": "x.json"}'])
    with pytest.raises(ValueError, match="data.eval_paths needs a real data.task"):
        make_config("cpu-tiny", overrides=['data.eval_paths={"aime": "x.json"}'])
    with pytest.raises(ValueError, match="advantage.max_gen_batches"):
        make_config("cpu-tiny", overrides=["advantage.max_gen_batches=0"])
    with pytest.raises(ValueError, match="advantage.dynamic_sampling_metric"):
        make_config("cpu-tiny", overrides=["advantage.dynamic_sampling_metric=std"])


def test_paper_preset_has_the_authors_eval_and_dynamic_sampling_settings():
    """recipe/dapo/1_5B_perf_run_dapo_ours_math_szp_ae_dapo_erc_1_05.sh in Kwai-Klear/ERC:
    val_files = the two AIME files, val_before_train=False, test_freq=10, val n=32, temperature 0.6,
    top_p 0.95, val_response_length 32K; gen_batch_size 256, train_batch_size 128,
    max_num_gen_batches 1, filter_groups.metric=acc; max_prompt_length 4K, truncation left."""
    c = PRESETS["gpu-paper-1.5b"]
    assert c.data.eval_paths == AUTHORS_EVAL_FILES and c.data.eval_path is None and c.data.max_prompt_tokens == 4096
    assert sorted(p.rsplit("/", 1)[-1] for p in c.data.eval_paths.values()) == [
        "aime960_math_verify25_uni.json", "aime960_math_verify_uni.json"]
    t = c.train
    assert (t.eval_every, t.eval_before_training, t.eval_k, t.eval_temperature, t.eval_top_p, t.eval_max_new_tokens) \
        == (10, False, 32, 0.6, 0.95, 32768)
    a = c.advantage
    assert (a.dynamic_sampling, a.gen_batch_prompts, a.max_gen_batches, a.dynamic_sampling_metric) == (True, 256, 1, "accuracy")
    assert c.rollout.prompts_per_step == 128


def test_authors_optimizer_warmup_from_zero_and_decay_on_every_parameter(tmp_path):
    """The authors' verl fork: lr factor step/warmup from step 0 (first step at lr 0) and weight
    decay on biases and norm weights too; ercref's default: (step+1)/warmup, no decay on 1-D params."""
    from ercref.lm.config import make_config
    from ercref.lm.trainer import Trainer

    base = ["sft.steps=0", "optim.warmup_steps=4", "optim.weight_decay=0.1", "train.progress=false"]
    lrs, groups = {}, {}
    for name, extra in {"ours": [], "authors": ["optim.warmup_from_zero=true", "optim.decay_1d_params=true"]}.items():
        tr = Trainer(make_config("cpu-tiny", overrides=base + extra), tmp_path / name)
        seq = []
        with warnings.catch_warnings():  # stepping the schedule alone, without optimizer steps, on purpose
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for _ in range(6):
                seq.append(tr.opt.param_groups[0]["lr"] / tr.cfg.optim.lr)
                tr.sched.step()
        lrs[name] = seq
        groups[name] = [(g["weight_decay"], len(g["params"])) for g in tr.opt.param_groups]
        n_params = sum(1 for p in tr.model.parameters() if p.requires_grad)
    assert lrs["ours"] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lrs["authors"] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert groups["authors"] == [(0.1, n_params), (0.0, 0)]
    assert groups["ours"][0][0] == 0.1 and 0 < groups["ours"][0][1] < n_params and groups["ours"][1][1] > 0

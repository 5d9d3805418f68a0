"""Training prompts (formats, dedup, errors), rank sharding and the distill config."""

import json

import pytest

from tiue_export.distill.config import DistillConfig
from tiue_export.distill.data import make_loader
from tiue_export.errors import InputError, MissingDependency
from tiue_export.prompts import dedupe, load_prompts


def test_dedupe_keeps_first_seen_order():
    assert dedupe([" b", "a", "b ", "", "  ", "c", "a"]) == ["b", "a", "c"]


def test_txt(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a cat\n\na dog\na cat\n  a bird  \n")
    assert load_prompts(p) == ["a cat", "a dog", "a bird"]


def test_jsonl_any_caption_key(tmp_path):
    p = tmp_path / "p.jsonl"
    rows = [{"caption": "a cat", "id": 1}, {"prompt": "a dog"}, {"text": "a cat"}, {"caption": "a bird", "text": "x"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_prompts(p) == ["a cat", "a dog", "a bird"]


def test_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text('id,caption\n1,"a cat, sitting"\n2,a dog\n3,"a cat, sitting"\n')
    assert load_prompts(p) == ["a cat, sitting", "a dog"]


def test_parquet(tmp_path):
    p = tmp_path / "p.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        p.write_bytes(b"PAR1")
        with pytest.raises(MissingDependency, match=r"pip install .tiue-export\[parquet\]."):
            load_prompts(p)
        return
    pq.write_table(pa.table({"prompt": ["a cat", "a dog", "a cat"]}), p)
    assert load_prompts(p) == ["a cat", "a dog"]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("missing.txt", None, "no such prompts file"),
        ("p.yaml", "- a cat\n", "unknown prompts format .yaml: use one of .txt, .jsonl, .csv, .parquet"),
        ("p.txt", "\n  \n", "no prompts found"),
        ("p.jsonl", '{"caption": "a"}\n{oops\n', "p.jsonl:2: not valid JSON"),
        ("p.jsonl", '{"url": "x"}\n', "no caption column: expected one of caption, prompt, text, found url"),
        ("p.jsonl", '["a cat"]\n', "p.jsonl:1: expected a JSON object"),
        ("p.csv", "id,url\n1,x\n", "no caption column"),
        ("p.csv", "caption\n\n", "no prompts found"),
        ("p.txt", b"a cat\n\xff\xfe\n", "is not UTF-8 text (line 2, byte 6"),
        ("p.csv", b"caption\n\xe9t\xe9\n", "is not UTF-8 text"),
        ("dir.txt", "DIR", "is a directory, not a file"),
    ],
)
def test_prompt_file_errors(tmp_path, name, content, message):
    p = tmp_path / name
    if content == "DIR":
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(InputError) as exc:
        load_prompts(p)
    assert message in str(exc.value)


def test_ranks_get_disjoint_shards_and_epochs_reshuffle():
    prompts = [f"p{i}" for i in range(12)]
    shards = [make_loader(prompts, 3, rank, 2, seed=0) for rank in range(2)]
    for loader in shards:
        loader.sampler.set_epoch(0)
    epoch0 = [[p for batch in loader for p in batch] for loader in shards]
    assert len(shards[0]) == len(shards[1]) == 2
    assert sorted(epoch0[0] + epoch0[1]) == sorted(prompts)  # every prompt once, no overlap
    again = make_loader(prompts, 3, 0, 2, seed=0)
    again.sampler.set_epoch(0)
    assert [p for b in again for p in b] == epoch0[0]  # deterministic
    shards[0].sampler.set_epoch(1)
    assert [p for b in shards[0] for p in b] != epoch0[0]


def test_config_roundtrip_and_resume_differences():
    cfg = DistillConfig(prompts="p.txt", out="o", steps=10)
    assert DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.differences(cfg.replace(steps=20, checkpoint_every=5)) == []
    assert cfg.differences(cfg.replace(lr=2e-6, seed=1)) == ["lr", "seed"]
    assert cfg.run_path.name == "o.run"
    cosine = cfg.replace(lr_schedule="cosine")
    assert cosine.differences(cosine.replace(steps=20)) == ["steps"]  # a decaying lr depends on the length
    assert cosine.differences(cosine.replace(checkpoint_every=5)) == []
    with pytest.raises(InputError, match="unknown distill config keys: bogus"):
        DistillConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_config_defaults_follow_the_authors():
    cfg = DistillConfig(prompts="p.txt", out="o")
    assert (cfg.k, cfg.batch_size, cfg.lr, cfg.lr_lora, cfg.guidance) == (4, 8, 1e-6, 1e-3, 4.5)
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lambda_kl) == (64, 108, ("to_q", "to_v"), 0.1)
    assert (cfg.vsd_t_min, cfg.vsd_t_max, cfg.lora_uncond_prob, cfg.max_grad_norm) == (20, 980, 0.1, 1.0)
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay, cfg.ema_decay, cfg.epochs) == (0.9, 0.999, 0.0, 0.9999, 3)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(k=0), "--k must be >= 1"),
        (dict(lr_schedule="step"), "--lr-schedule must be one of constant, cosine, linear"),
        (dict(lr_warmup_steps=-1), "--lr-warmup-steps must be >= 0"),
        (dict(baseline="two-step"), "unknown --baseline 'two-step'"),
        (dict(baseline="one-step-vsd"), "the one-step-vsd baseline is a K=1 student"),
        (dict(vsd_t_min=500, vsd_t_max=100), "need 0 <= --vsd-t-min <= --vsd-t-max"),
        (dict(lora_uncond_prob=1.5), "--lora-uncond-prob must be in [0, 1]"),
        (dict(mixed_precision="fp8"), "--mixed-precision must be one of"),
        (dict(lambda_kl=-1.0), "--lambda-kl must be >= 0"),
    ],
)
def test_config_errors(change, message):
    with pytest.raises(InputError) as exc:
        DistillConfig(prompts="p.txt", out="o", **change)
    assert message in str(exc.value)

"""Teacher pair stores: pair i is the same in a store of any size, drawn by any number of worker
processes; batched pairs match pairs drawn one at a time to float rounding; distill trains on the
first N pairs of a shared store and refuses one made for another recipe."""

from pathlib import Path

import pytest
import torch
from conftest import DISTILL_PROMPTS as PROMPTS
from helpers.cli import run_cli


def cli(argv) -> tuple[int, str]:
    """``(exit code, stdout)`` of ``tiue-export ARGV`` outside a test's capsys (module fixtures)."""
    import contextlib
    import io

    from helpers.cli import exit_code

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = exit_code(argv)
    return code, buf.getvalue()


def read_chunk(path):
    from tiue_export.distill.pairs import _read

    return _read(path)


@pytest.fixture(scope="module")
def store(teacher, prompts_file, tmp_path_factory):
    """A 64-pair store drawn by two worker processes, grown to 128 by one."""
    root = tmp_path_factory.mktemp("stores") / "two-workers"
    argv = ["distill-pairs", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(root), "--steps", "2", "--guidance", "3"]
    code, out = cli([*argv, "--count", "64", "--workers", "2"])
    assert code == 0, out
    first = read_chunk(root / "chunk-00000.safetensors")
    code, out = cli([*argv, "--count", "100", "--workers", "1", "--resume"])
    assert code == 0 and "128 pairs (ddim:2, CFG 3); 64 drawn now" in out, out
    return root, first


def test_a_store_grows_without_changing_its_pairs(store, teacher):
    from tiue_export.distill.pairs import load_pairs, pair_plan, read_spec

    root, first = store
    spec = read_spec(root)
    assert (spec.steps, spec.guidance, spec.batch) == (2, 3.0, 4)
    assert torch.equal(read_chunk(root / "chunk-00000.safetensors")[1], first[1])  # untouched by the resume
    noise, latents, texts = load_pairs(root, spec, 100)
    assert noise.shape[0] == latents.shape[0] == len(texts) == 100
    assert texts == pair_plan(PROMPTS, 100, 0)[0] and pair_plan(PROMPTS, 100, 0)[0][:64] == pair_plan(PROMPTS, 64, 0)[0]


def test_pairs_do_not_depend_on_the_workers_and_match_batch_one(store, teacher):
    from tiue_export.distill.pairs import PairTeacher, pair_plan, read_spec

    root, _ = store
    spec = read_spec(root)
    noise, latents, texts = read_chunk(root / "chunk-00001.safetensors")
    _, seeds = pair_plan(PROMPTS, 128, spec.seed)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker
    try:
        t = PairTeacher.load(Path(teacher))
        _, again = t.draw(texts[:8], seeds[64:72], spec)  # chunk 1 was drawn by another process
        assert torch.equal(again, latents[:8])
        _, alone = t.draw(texts[:4], seeds[64:68], spec.__class__(**{**spec.__dict__, "batch": 1}))
    finally:
        torch.set_num_threads(before)
    # drawn one at a time: the same pairs up to the kernels' summation order
    assert torch.allclose(alone, latents[:4], atol=1e-5, rtol=0)


def test_distill_trains_on_the_first_pairs_of_a_store(store, teacher, prompts_file, tmp_path):
    from tiue_export.distill.config import DistillConfig
    from tiue_export.distill.train import distill

    root, _ = store
    cfg = DistillConfig(prompts=str(prompts_file), out=str(tmp_path / "s"), teacher=str(teacher), steps=1, batch_size=2,
                        regression_pairs=70, pairs=str(root))
    result = distill(cfg)
    import json

    recipe = json.loads((result.out / "tiue.json").read_text())["provenance"]["recipe"]
    assert (recipe["regression_steps"], recipe["regression_guidance"], recipe["pair_batch"], recipe["pairs"]) == (2, 3.0, 4, str(root))
    run = Path(str(result.out) + ".run")
    assert not (run / "pairs").exists()  # the shared store was used
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert last["mse_pairs"] > 0 and last["mse_fresh"] > 0 and "strict_fresh" not in last  # not toy captions: no judge


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--regression-pairs", "70", "--regression-steps", "5"], "was drawn with another recipe: --regression-steps 5 (the store's: 2)"),
        (["--regression-pairs", "70", "--seed", "3"], "was drawn with another recipe: --seed 3 (the store's: 0)"),
        (["--regression-pairs", "500"], "the store holds fewer than 500 pairs; draw them with tiue-export distill-pairs --resume"),
        ([], "--pairs needs --regression-pairs N"),
    ],
)
def test_distill_refuses_a_store_it_cannot_use(store, teacher, prompts_file, tmp_path, capsys, extra, message):
    root, _ = store
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(tmp_path / "s"), "--steps", "1", "--pairs", str(root)]
    code, _, err = run_cli(argv + extra, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_distill_pairs_refuses_bad_input(store, teacher, prompts_file, tmp_path, capsys):
    root, _ = store
    base = ["distill-pairs", "--teacher", str(teacher), "--prompts", str(prompts_file), "--steps", "2", "--guidance", "3"]
    code, _, err = run_cli(base + ["--count", "64", "--out", str(root)], capsys)
    assert code == 2 and f"{root} already exists: pass --resume to add to it" in err
    code, _, err = run_cli(base + ["--count", "64", "--out", str(root), "--resume", "--steps", "3"], capsys)
    assert code == 2 and f"{root} holds another recipe's teacher pairs" in err
    code, _, err = run_cli(base + ["--count", "0", "--out", str(tmp_path / "new")], capsys)
    assert code == 2 and "--count must be >= 1, got 0" in err
    assert not (tmp_path / "new").exists()


def test_the_log_shows_pair_and_fresh_noise_errors_at_each_checkpoint(teacher, tmp_path):
    import json

    from tiue_export.distill.config import DistillConfig
    from tiue_export.distill.train import distill

    prompts = tmp_path / "toy.txt"  # toy captions: the strict judge scores the fresh noises' images
    prompts.write_text("a small red circle on a blue background\na large green cross on a white background\n")
    out = tmp_path / "s"
    distill(DistillConfig(prompts=str(prompts), out=str(out), teacher=str(teacher), steps=3, batch_size=2, checkpoint_every=2,
                          regression_pairs=4, regression_steps=1))
    records = [json.loads(line) for line in (Path(str(out) + ".run") / "log.jsonl").read_text().splitlines()]
    probed = [r["step"] for r in records if "mse_fresh" in r]
    assert probed == [2, 3]  # the checkpoints: every 2 steps and the last
    for r in records:
        if r["step"] in probed:
            assert r["mse_pairs"] > 0 and r["mse_fresh"] > 0 and 0.0 <= r["strict_fresh"] <= 1.0


# -- the authors' CLIP term -----------------------------------------------------------------------
def tiny_clip(path: Path) -> Path:
    """A random CLIP model (both towers tiny) with the tiny models' tokenizer, saved to ``path``."""
    from transformers import CLIPConfig, CLIPModel

    from tiue_export.reference.tokenizer_builder import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(path, model_max_length=16)
    torch.manual_seed(0)
    common = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**common, "vocab_size": len(tok), "max_position_embeddings": 16, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={**common, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    return path


def test_the_clip_term_joins_the_loss_and_decays_to_zero_over_an_epoch(teacher, prompts_file, tmp_path):
    import json

    from tiue_export.distill.config import DistillConfig
    from tiue_export.distill.losses import clip_text_loss, clip_weight
    from tiue_export.distill.train import distill

    same = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    assert clip_text_loss(same, same, 0.35) == 0  # matching images: cos 1 > tau
    assert clip_text_loss(same, -same, 0.35) == pytest.approx(1.35)
    assert [clip_weight(s, 4, 0.1) for s in (0, 2, 4, 6)] == pytest.approx([0.1, 0.05, 0.0, 0.0])

    clip = tiny_clip(tmp_path / "clip")
    out = tmp_path / "s"
    cfg = DistillConfig(prompts=str(prompts_file), out=str(out), teacher=str(teacher), steps=3, batch_size=2, checkpoint_every=3, clip_model=str(clip))
    with_clip = distill(cfg)
    records = [json.loads(line) for line in (Path(str(out) + ".run") / "log.jsonl").read_text().splitlines()]
    # a random CLIP: images far from their prompts; 4 prompts at batch 2 are an epoch of 2 steps, after
    # which the weight is 0 and the term is not computed
    assert [r["loss_clip"] > 0 for r in records] == [True, True, False]
    plain = distill(cfg.replace(out=str(tmp_path / "plain"), clip_model=None))
    a, b = dict(with_clip.student.unet.named_parameters()), dict(plain.student.unet.named_parameters())
    assert any(not torch.equal(a[n], b[n]) for n in a)  # the term moves the student
    assert "loss_clip" not in json.loads((tmp_path / "plain.run" / "log.jsonl").read_text().splitlines()[0])


def test_a_clip_directory_that_is_not_one_is_one_line(teacher, prompts_file, tmp_path, capsys):
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(tmp_path / "s"), "--steps", "1"]
    code, _, err = run_cli(argv + ["--clip-model", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == f"error: --clip-model {tmp_path} is not a CLIP model directory (no config.json): give a local transformers CLIPModel directory"
    code, _, err = run_cli(argv + ["--clip-tau", "2"], capsys)
    assert code == 2 and err.strip() == "error: --clip-tau must be in [-1, 1] (a cosine), got 2.0"

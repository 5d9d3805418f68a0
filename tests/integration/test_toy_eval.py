"""The toy classifier (shipped weights) and ``tiue-export toy eval`` end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from tiue_export.errors import InputError, ModelError
from tiue_export.toy import domain
from tiue_export.toy.classifier import (
    DEFAULT_CLASSIFIER,
    TrainConfig,
    load_classifier,
    render_pool,
    train_classifier,
)
from tiue_export.toy.evaluate import EvalConfig, evaluate, generate, parse_splits, real_images


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def run_cli(capsys, *args):
    from tiue_export.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# -- classifier -----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_shipped_classifier_is_right_on_fresh_renders(classifier, split):
    # Seed 777 is neither the training pool's (0) nor the stored check's (10000, 10001).
    images, attrs = render_pool(200, 777, domain.combos(split), 64)
    acc = classifier.accuracy(images, attrs)
    assert acc["all"] >= 0.98, acc


def test_shipped_classifier_records_its_accuracy(classifier):
    acc = json.loads((DEFAULT_CLASSIFIER / "config.json").read_text())["accuracy"]
    assert acc["train"]["all"] >= 0.98 and acc["heldout"]["all"] >= 0.98
    assert classifier.meta["accuracy"] == acc


def test_classifier_resizes_other_resolutions(classifier):
    images, attrs = render_pool(40, 778, domain.combos("train"), 128)
    pred = classifier.predict(images)
    assert pred.features.shape == (40, classifier.config.feature_dim)
    assert classifier.accuracy(images, attrs)["all"] >= 0.9


def test_missing_classifier_is_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"not a toy classifier directory \(no config.json\)"):
        load_classifier(tmp_path)


def test_train_classifier_writes_a_loadable_directory(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, pool_size=32, eval_images=4)
    meta = train_classifier(tmp_path / "clf", config=cfg, seed=3)
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["config.json", "model.safetensors"]
    assert meta["train"]["seed"] == 3 and set(meta["accuracy"]) == {"train", "heldout"}
    assert load_classifier(tmp_path / "clf").meta == json.loads((tmp_path / "clf" / "config.json").read_text())


# -- evaluator on stand-in samplers ---------------------------------------------------------------
def test_real_renders_score_like_real_images(classifier):
    # A "model" that renders the domain itself: accuracy at the classifier's ceiling, FD near 0.
    cfg = EvalConfig(prompts=3, seeds=3, splits=("train",))
    res = evaluate(lambda p, s: real_images(p, seed=99, resolution=64), cfg, classifier)
    s = res.report["splits"]["train"]
    assert s["images"] == 9 and s["prompt_accuracy"] >= 8 / 9
    assert s["strict_accuracy"] == 1.0 and not any(s["defect_rates"].values())
    assert res.reasons["train"] == ["ok"] * 9 and res.right["train"].all()
    assert s["precision"] > 0.5 and s["coverage"] > 0.5
    assert s["reference"]["prompt_accuracy"] == 1.0 and s["reference"]["fd"] > 0.0
    gray = evaluate(lambda p, s: np.full((len(p), 32, 32, 3), 128, np.uint8), cfg, classifier)
    g = gray.report["splits"]["train"]
    assert g["fd"] > 10 * max(s["fd"], 1e-3)
    # Identical fakes have k-NN radius 0 (mode collapse): no real point is recalled.
    assert g["recall"] == 0.0 and g["prompt_accuracy"] < s["prompt_accuracy"]
    # No object on a plain background: the strict judge says so for every image.
    assert g["strict_accuracy"] == 0.0 and g["defect_rates"]["no object"] == 1.0


def test_bad_sampler_output_is_input_error():
    with pytest.raises(InputError, match=r"the sampler returned float64 \(2, 8, 8, 3\); expected uint8 \(2, H, W, 3\)"):
        generate(lambda p, s: np.zeros((len(p), 8, 8, 3)), ["a", "b"], [0, 1], batch_size=4)


def test_parse_splits():
    assert parse_splits("both") == ("train", "heldout") and parse_splits("heldout") == ("heldout",)
    with pytest.raises(InputError, match="unknown split 'test': use train, heldout or both"):
        parse_splits("test")


# -- CLI ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_eval_end_to_end_on_a_tiny_model(tiny_sd21, tmp_path, capsys):
    out_json, out_png = tmp_path / "r" / "eval.json", tmp_path / "r" / "grid.png"
    code, out, err = run_cli(
        capsys, "toy", "eval", "--model", str(tiny_sd21), "--prompts", "2", "--seeds", "2",
        "--json", str(out_json), "--grid", str(out_png),
    )
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["model"] == str(tiny_sd21) and report["backend"] == "torch"
    assert report["sampler"] == "one-pass" and report["guidance"] is None
    assert report["seeds"] == [0, 1] and report["config"]["prompts"] == 2
    assert set(report["versions"]) >= {"tiue-export", "torch", "numpy"}
    for split in ("train", "heldout"):
        s = report["splits"][split]
        assert s["images"] == 4 and 0.0 <= s["prompt_accuracy"] <= 1.0 and s["fd"] >= 0.0
        assert s["precision"] is None  # 4 images: too few for k=5 balls, reported as null
        assert set(s["attribute_accuracy"]) == set(domain.ATTRIBUTES)
        assert s["reference"]["prompt_accuracy"] == 1.0 and s["reference"]["images"] == 4
    assert "precision/recall/density/coverage need more than k=5 images" in err
    with Image.open(out_png) as im:
        assert im.size == (220 + 2 * 100 + 4, 4 * 100 + 4)  # 2 splits x 2 prompts rows, 2 seeds
    assert "train" in out and "heldout" in out and f"wrote {out_json}" in out


@pytest.mark.slow
def test_onnxruntime_backend_matches_torch_on_a_bundle(tiny_models, tmp_path_factory, capsys, tmp_path):
    from helpers.bundles import tiny_bundle

    from tiue_export.toy.evaluate import make_sample_fn

    bundle = tiny_bundle(tiny_models, tmp_path_factory)
    prompts, seeds = ["a small red circle on a blue background", "a large green cross on a white background"], [3, 4]
    ort_fn, ort_info = make_sample_fn("onnxruntime", bundle)
    torch_fn, _ = make_sample_fn("torch", tiny_models("sd21"), "one-pass")
    a, b = ort_fn(prompts, seeds), torch_fn(prompts, seeds)
    assert a.shape == b.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert ort_info["backend"] == "onnxruntime" and ort_info["sampler"] == "one-pass"
    out_json = tmp_path / "eval.json"
    code, out, err = run_cli(capsys, "toy", "eval", "--backend", "onnxruntime", "--model", str(bundle),
                             "--prompts", "1", "--seeds", "1", "--split", "train", "--json", str(out_json))
    assert code == 0, err
    assert json.loads(out_json.read_text())["backend"] == "onnxruntime"
    # A bundle runs one-pass only, and int8 needs calibrated graphs.
    code, _, err = run_cli(capsys, "toy", "eval", "--backend", "onnxruntime", "--model", str(bundle), "--sampler", "ddim:4")
    assert code == 2 and err.strip() == "error: --sampler ddim:4: a bundle runs the one-pass sampler only"
    code, _, err = run_cli(capsys, "toy", "eval", "--backend", "onnxruntime", "--model", str(bundle), "--precision", "int8")
    assert code == 2 and "int8" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "toy", "eval", "--backend", "onnxruntime", "--model", str(tiny_models("sd21")))
    assert code == 2 and "is not an exported bundle (no manifest.json)" in err


def test_openvino_backend_matches_onnxruntime_on_a_bundle(tiny_models, tmp_path_factory, capsys, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'tiue-export[openvino]')")
    from helpers.bundles import tiny_bundle

    from tiue_export.toy.evaluate import make_sample_fn

    bundle = tiny_bundle(tiny_models, tmp_path_factory)
    prompts, seeds = ["a small red circle on a blue background"], [3]
    ov_fn, ov_info = make_sample_fn("openvino", bundle, precision="fp32")
    ort_fn, _ = make_sample_fn("onnxruntime", bundle)
    assert np.abs(ov_fn(prompts, seeds).astype(int) - ort_fn(prompts, seeds).astype(int)).max() <= 1
    assert ov_info["backend"] == "openvino" and ov_info["provider"] == "OpenVINO CPU fp32"
    out_json = tmp_path / "eval.json"
    code, _, err = run_cli(capsys, "toy", "eval", "--backend", "openvino", "--model", str(bundle),
                           "--prompts", "1", "--seeds", "1", "--split", "train", "--json", str(out_json))
    assert code == 0, err
    assert json.loads(out_json.read_text())["backend"] == "openvino"
    code, _, err = run_cli(capsys, "toy", "eval", "--backend", "openvino", "--model", str(bundle), "--sampler", "loop")
    assert code == 2 and err.strip() == "error: --sampler loop: a bundle runs the one-pass sampler only"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "test"], "error: unknown split 'test': use train, heldout or both"),
        (["--split", "heldout", "--prompts", "30"], "error: the heldout split has 26 distinct prompts; asked for 30"),
        (["--seeds", "0"], "error: --seeds must be >= 1, got 0"),
        (["--sampler", "euler"], "error: unknown sampler 'euler': use one-pass, loop or ddim:N (N >= 1)"),
        (["--backend", "tensorflow"], "error: unknown backend 'tensorflow': use torch, onnxruntime, openvino, tensorrt or a registry name (torch, torch-bf16, onnxruntime, onnxruntime-int8, openvino, openvino-fp32, openvino-bf16, openvino-fp16, openvino-int8, openvino-int8-qdq, tensorrt-fp16, tensorrt-int8, tensorrt-fp32)"),
        (["--grid", "grid.jpg"], "error: --grid grid.jpg: the file name must end in .png"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(capsys, tmp_path, args, message):
    out_json = tmp_path / "eval.json"
    code, _, err = run_cli(capsys, "toy", "eval", *args, "--json", str(out_json))
    assert code == 2
    assert err.strip() == message
    assert not out_json.exists()


def test_cli_json_under_a_file_is_one_line_exit_2(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = run_cli(capsys, "toy", "eval", "--json", str(tmp_path / "f" / "r.json"))
    assert code == 2
    assert err.strip() == f"error: --json {tmp_path / 'f' / 'r.json'}: {tmp_path / 'f'} is not a directory"


def test_cli_missing_model_is_one_line_exit_2(capsys, tmp_path):
    out_json = tmp_path / "eval.json"
    code, _, err = run_cli(capsys, "toy", "eval", "--model", str(tmp_path / "nope"), "--json", str(out_json))
    assert code == 2
    assert err.strip() == f"error: no such model directory: {tmp_path / 'nope'}"
    assert not out_json.exists()


def test_cli_train_classifier_bad_steps(capsys, tmp_path):
    code, _, err = run_cli(capsys, "toy", "train-classifier", "--out", str(tmp_path / "clf"), "--steps", "0")
    assert code == 2
    assert err.strip() == "error: --steps must be >= 1, got 0"
    assert not (tmp_path / "clf").exists()


# -- intervals and paired comparison --------------------------------------------------------------
def test_cluster_bootstrap_on_known_answers():
    from tiue_export.toy.metrics import cluster_bootstrap

    assert cluster_bootstrap(np.ones(26)) == (1.0, 1.0, 1.0)  # every caption always right: no doubt
    assert cluster_bootstrap(np.zeros(198)) == (0.0, 0.0, 0.0)
    # half of 200 captions always right, half never: mean 0.5, interval near +-1.96 sqrt(0.25 / 200)
    mean, low, high = cluster_bootstrap(np.repeat([0.0, 1.0], 100), reps=4000)
    assert mean == 0.5 and abs((high - low) / 2 - 1.96 * 0.5 / 200**0.5) < 0.005
    with pytest.raises(InputError, match="non-empty 1-D array of finite"):
        cluster_bootstrap([])


def test_real_renders_of_every_caption_score_100_percent_with_a_closed_interval(classifier):
    cfg = EvalConfig(prompts=None, seeds=1, splits=("heldout",))
    assert len(cfg.prompts_for("heldout")) == 26
    res = evaluate(lambda p, s: real_images(p, seed=7, resolution=64), cfg, classifier)
    s = res.report["splits"]["heldout"]
    assert s["captions"] == 26 and s["strict_accuracy"] == 1.0 and s["strict_accuracy_ci"] == [1.0, 1.0]


def _report(per_prompt: dict, seeds=(0, 1)) -> dict:
    acc = float(np.mean(list(per_prompt.values())))
    return {"seeds": list(seeds), "splits": {"train": {"per_prompt": per_prompt, "strict_accuracy": acc, "strict_accuracy_ci": [acc, acc]}}}


def test_a_model_compared_with_itself_differs_by_exactly_zero(classifier):
    from tiue_export.toy.evaluate import compare_reports

    cfg = EvalConfig(prompts=6, seeds=2, splits=("train",))
    rng = np.random.default_rng(0)
    noisy = evaluate(lambda p, s: np.clip(real_images(p, 7, 64) + rng.integers(0, 90, (len(p), 64, 64, 3)), 0, 255).astype(np.uint8), cfg, classifier)
    c = compare_reports(noisy.report, noisy.report)["train"]
    assert c["difference"] == 0.0 and c["difference_ci"] == [0.0, 0.0] and c["verdict"] == "no clear difference"
    better = compare_reports(_report({"a": 0.0, "b": 0.5, "c": 0.5}), _report({"a": 1.0, "b": 1.0, "c": 1.0}))["train"]
    assert better["difference"] == pytest.approx(2 / 3) and better["difference_ci"][0] > 0 and better["verdict"] == "B better"


def test_cli_compare_prints_the_difference_and_refuses_mismatched_reports(capsys, tmp_path):
    a, b, c, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json", tmp_path / "bad.json"
    a.write_text(json.dumps(_report({"x": 0.25, "y": 0.5})))
    b.write_text(json.dumps(_report({"x": 0.75, "y": 1.0})))
    c.write_text(json.dumps(_report({"x": 0.75, "z": 1.0})))
    bad.write_text("[1, 2]")
    code, out, err = run_cli(capsys, "toy", "compare", str(a), str(b), "--json", str(tmp_path / "cmp.json"))
    assert code == 0, err
    assert "train" in out and "+0.500" in out and "B better" in out
    assert json.loads((tmp_path / "cmp.json").read_text())["splits"]["train"]["difference"] == 0.5
    code, _, err = run_cli(capsys, "toy", "compare", str(a), str(c))
    assert code == 2 and err.strip() == "error: the reports scored different train captions: evaluate both with the same --prompts"
    code, _, err = run_cli(capsys, "toy", "compare", str(a), str(bad))
    assert code == 2 and err.strip() == f"error: {bad} is not a toy eval --json report (no splits with per-caption scores)"
    b.write_text(json.dumps(_report({"x": 0.75, "y": 1.0}, seeds=(0,))))
    code, _, err = run_cli(capsys, "toy", "compare", str(a), str(b))
    assert code == 2 and "the reports used different seeds" in err

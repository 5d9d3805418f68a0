"""The CLI: help without heavy imports, infer end to end, one-line errors with exit codes."""

import re
import subprocess
import sys

import pytest
from helpers.cli import run_cli as run
from PIL import Image


def test_help_imports_no_heavy_module():
    code = (
        "import sys\nfrom tiue_export.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'onnxruntime', 'tensorrt') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "infer" in out.stdout


def test_infer_writes_deterministic_pngs_with_metadata(tiny_sd21, tmp_path, capsys):
    args = ["infer", "--model", str(tiny_sd21), "--prompt", "a red cube", "--prompt", "a cat", "--num-images", "2", "--seed", "7"]
    code, out, err = run(args + ["--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    files = sorted((tmp_path / "a").glob("*.png"))
    stems = ["000-a-red-cube-s7", "001-a-red-cube-s8", "002-a-cat-s7", "003-a-cat-s8"]
    assert [f.name[:-13] for f in files] == stems and all(re.fullmatch(r"-[0-9a-f]{8}\.png", f.name[-13:]) for f in files)
    assert "unet_encoder" in out and "unet_decoder" in out and "vae_decoder" in out
    img = Image.open(files[1])
    assert img.size == (16, 16)
    assert img.text["prompt"] == "a red cube" and img.text["seed"] == "8" and img.text["sampler"] == "one-pass"
    assert img.text["model"] == str(tiny_sd21)
    code, _, _ = run(args + ["--out", str(tmp_path / "b")], capsys)
    assert code == 0
    for f in files:  # the same recipe: the same names, the same bytes
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    # another sampler into the same directory: new names, the first run's images untouched
    before = {f.name: f.read_bytes() for f in files}
    code, _, err = run(args + ["--out", str(tmp_path / "a"), "--sampler", "loop"], capsys)
    assert code == 0, err
    after = {f.name: f.read_bytes() for f in (tmp_path / "a").glob("*.png")}
    assert len(after) == 8 and all(after[n] == b for n, b in before.items())


def test_infer_single_file_and_prompts_file(tiny_sd21, tmp_path, capsys):
    pf = tmp_path / "p.txt"
    pf.write_text("a cat\n\n")
    code, out, err = run(["infer", "--model", str(tiny_sd21), "--prompts-file", str(pf), "--out", str(tmp_path / "one.png"), "--sampler", "loop"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "one.png").text["sampler"] == "loop"


def test_infer_default_model_is_the_shipped_one(tmp_path, capsys):
    from tiue_export.reference.builtin import ASSETS, BUILTIN, default_model

    shipped = next(ASSETS / n for n in BUILTIN if (ASSETS / n / "model_index.json").exists())
    assert default_model() == shipped
    code, out, err = run(["infer", "--prompt", "a small red circle on a blue background", "--out", str(tmp_path / "d")], capsys)
    assert code == 0, err
    (png,) = (tmp_path / "d").glob("*.png")
    with Image.open(png) as img:
        assert img.size == (64, 64) and img.text["model"] == str(shipped)


def test_missing_builtin_model_is_one_line(tmp_path, capsys, monkeypatch):
    import tiue_export.reference.builtin

    monkeypatch.setattr(tiue_export.reference.builtin, "ASSETS", tmp_path / "assets")
    code, out, err = run(["infer", "--prompt", "a cat", "--out", str(tmp_path / "d")], capsys)
    assert code != 0 and "built-in model is missing" in err and "--model PATH" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "/nonexistent/model"], "error: no such model directory: /nonexistent/model"),
        (["--sampler", "euler"], "error: unknown sampler 'euler'"),
        (["--height", "17"], "error: height 17 is not possible for this model"),
        (["--prompts-file", "/nonexistent.txt"], "error: no such prompts file"),
        (["--prompts-file", "TMP/latin1.txt"], "latin1.txt is not UTF-8 text (line 1, byte 5: b'\\xe9')"),
        (["--prompts-file", "TMP/a-dir"], "a-dir is a directory, not a file"),
        (["--num-images", "2", "--out", "x.png"], "names one file but 2 images were asked for"),
    ],
)
def test_infer_bad_input_is_one_line(tiny_sd21, tmp_path, capsys, extra, message):
    (tmp_path / "latin1.txt").write_bytes(b"a caf\xe9\n")
    (tmp_path / "a-dir").mkdir()
    extra = [str(tmp_path / x[4:]) if x.startswith("TMP/") else x for x in extra]
    argv = ["infer", "--prompt", "a cat", "--model", str(tiny_sd21), "--out", str(tmp_path / "o")] + extra
    code, out, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.parametrize(
    "argv,parts,where",
    [
        (["infer", "--no-such-option"], ["No such option", "--no-such-option"], "tiue-export infer"),
        (["infer", "--backend", "cuda"], ["Invalid value for '--backend'", "'cuda' is not one of"], "tiue-export infer"),
        (["export"], ["Missing option '--out'"], "tiue-export export"),
        (["no-such-command"], ["No such command 'no-such-command'"], "tiue-export"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, parts, where):
    """click's usage errors read as the project's own: one line, the reason, where --help is."""
    code, _, err = run(argv, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert all(p in err for p in parts) and err.strip().endswith(f"(see '{where} --help')")


def test_infer_without_prompt(capsys):
    code, _, err = run(["infer"], capsys)
    assert code == 2 and "no prompt given" in err


def test_ctrl_c_is_exit_130_and_stops_the_test_run(monkeypatch, capsys):
    """Ctrl-C in a command: one line and exit 130; in-process (the tests) it stops the run as a
    KeyboardInterrupt instead of counting as one failed test and going on."""
    from helpers.cli import exit_code

    from tiue_export.build import calibrate
    from tiue_export.cli import main

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibrate, "calibrate_bundle", interrupted)
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "bundle"])
    assert exc.value.code == 130 and capsys.readouterr().err.strip() == "aborted"
    with pytest.raises(KeyboardInterrupt):
        exit_code(["calibrate", "bundle"])

"""TensorRT engines: everything that needs no GPU runs here (profiles with KB = K*B, the engine
manifest, refusals, version/GPU/staleness checks, the build flow on a stand-in tensorrt module);
real builds and runs are marked gpu/trt and skip, saying why, without TensorRT or a CUDA device."""

import ctypes
import json
import shutil
import sys
import types
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.bundles import tiny_bundle
from helpers.cli import run_cli as run

from tiue_export.backends import tensorrt_checks as checks
from tiue_export.backends.tensorrt_checks import GpuInfo, check_engines
from tiue_export.build import tensorrt as build_mod
from tiue_export.build.tensorrt import BuildConfig, build_engines, pipeline_graphs, profile_shapes
from tiue_export.bundle import sha256_file
from tiue_export.errors import InputError, MissingDependency, ModelError, TiueError
from tiue_export.runtime import Bundle
from tiue_export.specs import BatchProfile, GraphSpec, TensorSpec, Tolerance

NO_TRT = "error: TensorRT is not installed: pip install 'tiue-export[tensorrt]'"


@pytest.fixture(scope="session")
def fp32_bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


def validate_manifest(manifest):
    import jsonschema

    schema = json.loads(resources.files("tiue_export").joinpath("schemas/manifest.schema.json").read_text())
    jsonschema.validate(manifest, schema, cls=jsonschema.Draft202012Validator)


def copy_of(bundle, tmp_path, name="bundle"):
    dest = tmp_path / name
    shutil.copytree(bundle, dest)
    return dest


# -- stand-ins for tensorrt and cuda-python ------------------------------------------------------
class _Err(int):
    @property
    def value(self):
        return int(self)

    @property
    def name(self):
        return "cudaSuccess" if self == 0 else "cudaErrorNoDevice"


def fake_cudart(devices=1, major=9, minor=0, name=b"Fake H100"):
    rt = types.ModuleType("cudart")
    rt.cudaGetDeviceCount = lambda: (_Err(0), devices) if devices else (_Err(100), 0)
    props = types.SimpleNamespace(name=name, major=major, minor=minor, totalGlobalMem=80 << 30)
    rt.cudaGetDeviceProperties = lambda i: (_Err(0), props)
    return rt


def fake_tensorrt(version="10.13.0.35"):
    """Just enough of tensorrt's builder API to run build_engines: the "plan" is JSON with the
    ONNX graph's I/O names and the profile it was given."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, sev=None: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.OnnxParserFlag = types.SimpleNamespace(NATIVE_INSTANCENORM=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.built = []

    class Network:
        flags = None
        io = None

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors, self.flags = network, 0, []

        def set_flag(self, flag):
            self.flags.append(flag)

        def parse_from_file(self, path):
            g = onnx.load(path, load_external_data=False).graph
            self.network.io = ([i.name for i in g.input], [o.name for o in g.output])
            self.network.source = Path(path).name
            self.network.path = str(path)
            return True

    class Profile(dict):
        def set_shape(self, name, mn, opt, mx):
            self[name] = [list(mn), list(opt), list(mx)]

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+"

    class Config:
        builder_optimization_level = 3

        def __init__(self):
            self.profiles = []

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, data):
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            n = Network()
            n.flags = flags
            return n

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network.source, config.profiles[0], config.builder_optimization_level))
            return json.dumps({"io": network.io, "profile": config.profiles[0], "onnx": network.path}).encode()

    class Engine:
        def __init__(self, plan):
            d = json.loads(plan)
            self.inputs, self.outputs = d["io"]
            self.onnx = d["onnx"]
            self.device_memory_size_v2 = 1 << 20
            self.num_io_tensors = len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i):
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            g = onnx.load(self.onnx, load_external_data=False).graph
            t = next(v for v in list(g.input) + list(g.output) if v.name == name)
            return np.int64 if t.type.tensor_type.elem_type == onnx.TensorProto.INT64 else np.float32

        def create_execution_context(self, strategy):
            assert strategy == "user-managed"
            return Context(self)

    class Context:
        """Runs the plan's ONNX graph with ONNX Runtime on the memory behind the tensor addresses."""

        def __init__(self, engine):
            import onnxruntime as ort

            self.engine, self.addresses, self.shapes, self.scratch = engine, {}, {}, None
            self.session = ort.InferenceSession(engine.onnx, providers=["CPUExecutionProvider"])

        def set_device_memory(self, ptr, size):
            self.scratch = (ptr, size)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def execute_async_v3(self, stream):
            shapes, addresses = dict(self.shapes), dict(self.addresses)

            def run():
                feed = {}
                for name in self.engine.inputs:
                    dtype = np.dtype(self.engine.get_tensor_dtype(name))
                    feed[name] = _at(addresses[name], shapes[name], dtype).copy()
                for name, out in zip(self.engine.outputs, self.session.run(self.engine.outputs, feed)):
                    out = np.ascontiguousarray(out)
                    ctypes.memmove(addresses[name], out.ctypes.data, out.nbytes)
                trt.executed.append(self.engine.onnx)

            trt.cuda.enqueue(run)
            return True

    trt.Builder = Builder
    trt.OnnxParser = Parser
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=Engine)
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(USER_MANAGED="user-managed")
    trt.nptype = lambda t: t
    trt.executed = []
    return trt


def _at(ptr, shape, dtype):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_uint8 * n).from_address(ptr), dtype=np.uint8).view(dtype).reshape(shape)


class FakeCuda(types.ModuleType):
    """cuda.bindings.runtime on the CPU: "device" memory is host memory, a stream runs its work at
    once, capture records it and a graph launch replays it."""

    def __init__(self, devices=1):
        super().__init__("cudart")
        base = fake_cudart(devices)
        self.cudaGetDeviceCount, self.cudaGetDeviceProperties = base.cudaGetDeviceCount, base.cudaGetDeviceProperties
        self.memory, self.capturing, self.launches, self.freed = {}, None, 0, []
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2, cudaMemcpyDeviceToDevice=3)
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1, cudaStreamCaptureModeGlobal=0)

    ok = _Err(0)

    def enqueue(self, fn):
        if self.capturing is not None:
            self.capturing.append(fn)
        else:
            fn()

    def cudaSetDevice(self, i):
        return (self.ok,)

    def cudaMalloc(self, n):
        buf = np.zeros(n, np.uint8)
        self.memory[buf.ctypes.data] = buf
        return self.ok, buf.ctypes.data

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr):
        self.freed.append(self.memory.pop(ptr) is not None)
        return (self.ok,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.enqueue(lambda: ctypes.memmove(dst, src, n))
        return (self.ok,)

    def cudaStreamCreate(self):
        return self.ok, 7

    def cudaStreamSynchronize(self, stream):
        return (self.ok,)

    def cudaStreamDestroy(self, stream):
        return (self.ok,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (self.ok,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return self.ok, graph

    def cudaGraphInstantiate(self, graph, flags):
        return self.ok, list(graph)

    def cudaGraphLaunch(self, exe, stream):
        self.launches += 1
        for fn in exe:
            self.enqueue(fn)
        return (self.ok,)

    def cudaGraphDestroy(self, graph):
        return (self.ok,)

    cudaGraphExecDestroy = cudaGraphDestroy

    def cudaGetLastError(self):
        return (self.ok,)

    def cudaEventCreate(self):
        return self.ok, object()

    def cudaEventRecord(self, event, stream):
        return (self.ok,)

    def cudaEventElapsedTime(self, start, end):
        return self.ok, 1.5

    def cudaEventDestroy(self, event):
        return (self.ok,)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine with TensorRT 10.13 and one sm_90 GPU, as far as tiue_export can tell."""
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = trt.cuda = FakeCuda()
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", bindings.runtime)
    return trt


# -- profiles ------------------------------------------------------------------------------------
def test_profiles_scale_the_kb_axis_by_k():
    tol = Tolerance(1e-3, 1e-3, 0.999)
    spec = GraphSpec(
        "g",
        inputs=(TensorSpec("x", "float32", ("B", 4, 8, 8)), TensorSpec("rows", "float32", ("KB", 16)), TensorSpec("ids", "int64", ("B", 77))),
        outputs=(TensorSpec("y", "float32", ("KB", 4, 8, 8)),),
        opset=17,
        tolerance=tol,
    )
    p = profile_shapes(spec, BatchProfile(1, 2, 4), k=4)
    assert p["x"] == {"min": [1, 4, 8, 8], "opt": [2, 4, 8, 8], "max": [4, 4, 8, 8]}
    assert p["rows"] == {"min": [4, 16], "opt": [8, 16], "max": [16, 16]}
    assert p["ids"]["max"] == [4, 77]
    assert spec.outputs[0].concrete(3, 4) == (12, 4, 8, 8)


def test_profiles_of_a_real_bundle(fp32_bundle):
    bundle = Bundle.open(fp32_bundle)
    k = bundle.k
    dec = profile_shapes(bundle.spec("unet_decoder_fused"), BatchProfile(1, 1, 4), k)
    assert set(dec) == set(bundle.spec("unet_decoder_fused").input_names)
    assert dec["latents"]["max"] == [4, *bundle.latent_shape] and dec["mid"]["min"][0] == 1
    eps = bundle.spec("unet_decoder").outputs[0]
    assert eps.shape[0] == "KB" and eps.concrete(4, k)[0] == 4 * k
    assert pipeline_graphs(True)[2] == "unet_decoder_fused" and pipeline_graphs(False)[2] == "unet_decoder"


# -- refusals ------------------------------------------------------------------------------------
def test_build_trt_without_tensorrt_names_the_install(fp32_bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    code, out, err = run(["build-trt", str(fp32_bundle), "--precision", "fp16"], capsys)
    assert code == 1 and err.strip() == NO_TRT and not out


def test_build_trt_without_cuda_python_or_gpu(fp32_bundle, fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["cuda.bindings"], "runtime", fake_cudart(devices=0))
    code, _, err = run(["build-trt", str(fp32_bundle), "--precision", "fp32"], capsys)
    assert code == 1 and err.strip() == "error: no CUDA GPU found (cudaGetDeviceCount failed: cudaErrorNoDevice): TensorRT engines need an NVIDIA GPU and its driver"
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    code, _, err = run(["build-trt", str(fp32_bundle), "--precision", "fp32"], capsys)
    assert code == 1 and err.strip() == "error: cuda-python is not installed: pip install 'tiue-export[tensorrt]'"


def test_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("8.6.1"))
    with pytest.raises(MissingDependency, match=r"TensorRT 8.6.1 is too old \(need >= 10.1\): pip install -U tensorrt"):
        checks.import_tensorrt()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "int4"], "Invalid value for '--precision'"),
        (["--precision", "fp16", "--batch", "4:2:1"], "error: bad --batch '4:2:1'"),
        (["--precision", "fp16", "--opt-level", "9"], "error: --opt-level must be 0..5, got 9"),
    ],
)
def test_build_trt_bad_options(fp32_bundle, capsys, extra, message):
    code, _, err = run(["build-trt", str(fp32_bundle), *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_build_trt_wrong_bundle_precision(fp32_bundle, fake_gpu, capsys):
    code, _, err = run(["build-trt", str(fp32_bundle), "--precision", "fp16"], capsys)
    assert code == 2 and err.strip().endswith("has no fp16 graphs (it is fp32): export it with --precision fp16")
    code, _, err = run(["build-trt", str(fp32_bundle), "--precision", "int8"], capsys)
    assert code == 2 and err.strip().endswith(f"has no int8 graphs (it is fp32): run tiue-export calibrate {fp32_bundle}")


# -- engine records and the checks a runtime makes ------------------------------------------------
ENTRY = {
    "tensorrt": "10.13.0.35",
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
    "graphs": {"unet_encoder": {"source": "unet_encoder.int8.onnx", "source_sha256": "a" * 64}},
}
FILES = {"unet_encoder.int8.onnx": "a" * 64}


def test_check_engines_accepts_the_machine_they_were_built_on():
    check_engines(ENTRY, FILES, "10.13.0.35", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), "b", "int8")
    check_engines(ENTRY, FILES, "10.13.0.99", GpuInfo("NVIDIA H100 PCIe", "9.0"), "b", "int8")  # same sm, patch build


@pytest.mark.parametrize(
    "trt_version, gpu, files, message",
    [
        ("10.8.0.43", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), FILES, "were built with TensorRT 10.13.0.35, this is TensorRT 10.8.0.43"),
        ("10.13.0.35", GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"), FILES, "were built for NVIDIA H100 80GB HBM3 (compute capability 9.0), this GPU is NVIDIA A100-SXM4-80GB (8.0)"),
        ("10.13.0.35", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), {"unet_encoder.int8.onnx": "b" * 64}, "the int8 unet_encoder engine is older than unet_encoder.int8.onnx"),
    ],
)
def test_check_engines_refuses_mismatches(trt_version, gpu, files, message):
    with pytest.raises(ModelError) as exc:
        check_engines(ENTRY, files, trt_version, gpu, "bundle", "int8")
    assert message in str(exc.value) and str(exc.value).endswith("rebuild with tiue-export build-trt bundle --precision int8")


def with_engines(bundle, tmp_path, engines):
    dest = copy_of(bundle, tmp_path, "with-engines")
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps({**manifest, "engines": engines}))
    return dest


def test_tensorrt_backend_refuses_engines_from_another_gpu(fp32_bundle, fake_gpu, tmp_path, capsys):
    """infer --backend tensorrt checks the manifest against this machine before loading a plan."""
    entry = {**ENTRY, "precision": "fp16", "graphs": {}, "fused": True, "pipeline": list(pipeline_graphs(True)), "batch_profile": {"min": 1, "opt": 1, "max": 4}}
    a100 = {**entry, "gpu": {"name": "NVIDIA A100", "compute_capability": "8.0"}}
    bundle = with_engines(fp32_bundle, tmp_path, {"fp16": a100})
    code, _, err = run(["infer", "--backend", "tensorrt", "--model", str(bundle), "--prompt", "a cat", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.strip() == (
        "error: the fp16 engines were built for NVIDIA A100 (compute capability 8.0), this GPU is Fake H100 (9.0): "
        f"rebuild with tiue-export build-trt {bundle} --precision fp16"
    )
    old = {**entry, "precision": "int8", "tensorrt": "10.8.0.43"}
    bundle = with_engines(fp32_bundle, tmp_path / "2", {"int8": old, "fp16": entry})
    code, _, err = run(["infer", "--backend", "tensorrt", "--model", str(bundle), "--prompt", "a cat", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "needs --precision fp16|int8|fp32 (it has fp16, int8)" in err
    code, _, err = run(["infer", "--backend", "tensorrt", "--precision", "int8", "--model", str(bundle), "--prompt", "a", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "were built with TensorRT 10.8.0.43, this is TensorRT 10.13.0.35" in err
    code, _, err = run(["infer", "--backend", "tensorrt", "--model", str(fp32_bundle), "--prompt", "a", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "it has none: run tiue-export build-trt BUNDLE --precision fp16" in err


def test_device_buffer_links_follow_the_pipeline(fp32_bundle):
    from tiue_export.backends.tensorrt import links

    m = Bundle.open(fp32_bundle).manifest
    fused = links(m.chains["fused"], m)
    assert fused[("unet_decoder_fused", "latents")] == ("unet_encoder", "latents")  # the same z_T
    assert fused[("vae_decoder", "latents")] == ("unet_decoder_fused", "z0")
    assert fused[("unet_decoder_fused", "mid")] == ("unet_encoder", "mid")
    assert fused[("unet_encoder", "text_embeddings")] == ("text_encoder", "text_embeddings")
    unfused = links(m.chains["unfused"], m)
    assert ("vae_decoder", "latents") not in unfused  # z0 comes from the host-side Eq. 11
    assert unfused[("unet_decoder", "skip_0")] == ("unet_encoder", "skip_0")


# -- the build flow on the stand-in tensorrt -----------------------------------------------------
def test_build_writes_engines_and_manifest_atomically(fp32_bundle, fake_gpu, tmp_path, capsys):
    bundle = copy_of(fp32_bundle, tmp_path)
    cache = tmp_path / "timing.cache"
    code, out, err = run(
        ["build-trt", str(bundle), "--precision", "fp32", "--batch", "1:2:3", "--timing-cache", str(cache), "--opt-level", "4"], capsys
    )
    assert code == 0, err
    assert "wrote 4 fp32 engines" in out and "Fake H100 (sm 9.0), TensorRT 10.13.0.35, batch 1:2:3" in out
    manifest = json.loads((bundle / "manifest.json").read_text())
    validate_manifest(manifest)
    entry = manifest["engines"]["fp32"]
    assert entry["tensorrt"] == "10.13.0.35" and entry["gpu"]["compute_capability"] == "9.0" and entry["fused"] is True
    assert entry["batch_profile"] == {"min": 1, "opt": 2, "max": 3} and entry["build"]["builder_optimization_level"] == 4
    assert list(entry["graphs"]) == list(pipeline_graphs(True))
    k = manifest["sampler"]["k"]
    for name, g in entry["graphs"].items():
        assert g["file"] == f"engines/fp32/{name}.plan" and (bundle / g["file"]).is_file()
        assert g["source"] == f"{name}.onnx" and g["source_sha256"] == manifest["files"][g["source"]]
        assert manifest["files"][g["file"]]  # the plans are in the bundle's sha256 list
    fused = entry["graphs"]["unet_decoder_fused"]["profile"]
    assert fused["latents"] == {"min": [1, 4, 8, 8], "opt": [2, 4, 8, 8], "max": [3, 4, 8, 8]}
    sources = [b[0] for b in fake_gpu.built]
    assert sources == [f"{g}.onnx" for g in pipeline_graphs(True)] and all(b[2] == 4 for b in fake_gpu.built)
    assert cache.read_bytes() == b"++++"  # one shared cache, updated by each of the 4 builds
    Bundle.open(bundle, verify=True)
    assert not list(tmp_path.glob(".bundle.*"))
    assert k == len(manifest["sampler"]["E"])
    # a --no-fused rebuild replaces the fused decoder's plan, and keeps nothing stale
    code, _, err = run(["build-trt", str(bundle), "--precision", "fp32", "--no-fused"], capsys)
    assert code == 0, err
    plans = sorted(p.name for p in (bundle / "engines" / "fp32").iterdir())
    assert plans == sorted(f"{g}.plan" for g in pipeline_graphs(False))
    Bundle.open(bundle, verify=True)


def test_build_int8_uses_the_qdq_graphs(fp32_bundle, fake_gpu, tmp_path, capsys):
    bundle = copy_of(fp32_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("unet_encoder", "unet_decoder_fused"):  # stand-in Q/DQ files: the builder only reads I/O names
        shutil.copy(bundle / f"{name}.onnx", bundle / f"{name}.int8.onnx")
        digest = sha256_file(bundle / f"{name}.int8.onnx")
        manifest["graphs"][name]["variants"] = {"int8": {"file": f"{name}.int8.onnx", "precision": "int8", "external_data": [], "sha256": digest}}
    from tiue_export.bundle import Manifest, publish

    publish(bundle, {}, Manifest.from_dict({**manifest, "files": {**manifest["files"], **{f"{n}.int8.onnx": sha256_file(bundle / f"{n}.int8.onnx") for n in ("unet_encoder", "unet_decoder_fused")}}}))
    code, _, err = run(["build-trt", str(bundle), "--precision", "int8"], capsys)
    assert code == 0, err
    entry = json.loads((bundle / "manifest.json").read_text())["engines"]["int8"]
    assert entry["graphs"]["unet_encoder"]["source"] == "unet_encoder.int8.onnx" and entry["graphs"]["unet_encoder"]["precision"] == "int8"
    assert entry["graphs"]["text_encoder"]["source"] == "text_encoder.onnx" and entry["graphs"]["vae_decoder"]["precision"] == "fp32"


def test_failed_build_leaves_the_bundle_as_it_was(fp32_bundle, fake_gpu, tmp_path, monkeypatch):
    bundle = copy_of(fp32_bundle, tmp_path)
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    real = build_mod.build_plan

    def fail_on_vae(trt, logger, onnx_path, *args):
        if onnx_path.name.startswith("vae"):
            raise TiueError("TensorRT could not build an engine from vae_decoder.onnx")
        return real(trt, logger, onnx_path, *args)

    monkeypatch.setattr(build_mod, "build_plan", fail_on_vae)
    with pytest.raises(TiueError, match="vae_decoder"):
        build_engines(BuildConfig(bundle=bundle, precision="fp32"))
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before and not list(tmp_path.glob(".bundle.*"))


def test_backend_plumbing_on_stand_ins_matches_onnxruntime(fp32_bundle, fake_gpu, tmp_path):
    """The TensorRT backend's buffers, links, shapes, scratch and CUDA-graph replay, run on a CPU
    stand-in whose "engines" are the ONNX graphs: it must give ONNX Runtime's images exactly."""
    from tiue_export.runtime import Pipeline

    bundle = copy_of(fp32_bundle, tmp_path)
    build_engines(BuildConfig(bundle=bundle, precision="fp32"))
    prompts = ["a photo of a cat", "a red cube on a blue table", "two dogs playing in the snow"]
    cuda = fake_gpu.cuda
    with Pipeline.load(bundle, ["CPUExecutionProvider"]) as ort, Pipeline.load(bundle, backend="tensorrt") as pipe:
        assert pipe.provider == "TensorRT 10.13.0.35 (fp32)"
        ref = ort(prompts, seed=3)
        ref2 = ort(prompts[:2], seed=3)
        first = pipe(prompts, seed=3)
        assert cuda.launches == 0 and len(fake_gpu.executed) == 4
        again = pipe(prompts, seed=3)  # same shapes: four graph replays, no new enqueue
        assert cuda.launches == 4 and len(fake_gpu.executed) == 8
        two = pipe(prompts[:2], seed=3)  # a new batch size: run and capture again
        assert cuda.launches == 4
        noise = pipe.prepare(prompts[:2], seed=3)[2]
        text = pipe.encode_text(prompts[:2])  # the stage interface check and bench use
        stage = pipe.decode_latents(pipe.decode_fused(pipe.encode(noise, text), text, noise))
        with pytest.raises(InputError, match=r"unet_encoder: input text_embeddings has shape \[1, "):
            pipe.encode(noise, text[:1])
        with pytest.raises(InputError, match="outside the engines' batch profile 1..4"):
            pipe(["a"] * 5)
        with pytest.raises(InputError, match="have no unet_decoder: rebuild with tiue-export build-trt --no-fused"):
            pipe.decode(pipe.encode(noise, text), text)
        assert set(first.timings) == {"text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"}
    from tiue_export import backends

    with backends.get("tensorrt-fp32").graphs(Bundle.open(bundle)) as graphs:  # what tiue-export check drives
        text = graphs.runner("text_encoder").infer({"input_ids": ort.tokenize(prompts[:2])})["text_embeddings"]
        feats = graphs.runner("unet_encoder").infer({"latents": noise, "text_embeddings": text})
        z0 = np.asarray(graphs.runner("unet_decoder_fused").infer({**feats, "text_embeddings": text, "latents": noise})["z0"])
        images = np.asarray(graphs.runner("vae_decoder").infer({"latents": z0})["images"])
        with Pipeline.load(bundle, ["CPUExecutionProvider"]) as ort2:
            assert np.array_equal(images, ort2.runner("vae_decoder").infer({"latents": z0})["images"])
        assert "unet_decoder" not in graphs.factories
    assert np.array_equal(first.images, ref.images) and np.array_equal(first.latents, ref.latents)
    assert np.array_equal(again.images, ref.images) and np.array_equal(two.images, ref2.images)
    assert np.array_equal(stage, ref2.images)
    assert cuda.freed and all(cuda.freed) and not cuda.memory  # every buffer given back on close


def test_backend_unfused_engines(fp32_bundle, fake_gpu, tmp_path):
    from tiue_export.backends.tensorrt import graphs
    from tiue_export.runtime import Pipeline

    bundle = copy_of(fp32_bundle, tmp_path)
    build_engines(BuildConfig(bundle=bundle, precision="fp32", fused=False))
    opened = Bundle.open(bundle)
    engines = graphs(opened, cuda_graphs=False)
    with Pipeline.load(bundle, ["CPUExecutionProvider"]) as ort, Pipeline(opened, "tensorrt", graphs=engines) as pipe:
        ref = ort(["a photo of a cat"], seed=1, fused=False)
        out = pipe(["a photo of a cat"], seed=1)
        with pytest.raises(InputError, match="built without the fused decoder: rebuild with build-trt --fused"):
            pipe(["a"], fused=True)
    assert np.array_equal(out.images, ref.images) and fake_gpu.cuda.launches == 0


def test_trt_imports_stay_lazy():
    import subprocess

    code = "import sys, tiue_export.build.tensorrt, tiue_export.backends.tensorrt, tiue_export.cli.build_trt; " \
        "print([m for m in ('tensorrt', 'cuda', 'polygraphy', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- on a real GPU -------------------------------------------------------------------------------
def _real_tensorrt_gpu():
    try:
        return checks.require_tensorrt_gpu()
    except TiueError as exc:  # MissingDependency included
        pytest.skip(f"needs TensorRT and a CUDA GPU: {exc}")


@pytest.mark.gpu
@pytest.mark.trt
def test_engines_match_onnxruntime_on_a_real_gpu(fp32_bundle, tmp_path):
    _real_tensorrt_gpu()
    from tiue_export.compare import compare_arrays
    from tiue_export.runtime import Pipeline

    bundle = copy_of(fp32_bundle, tmp_path)
    build_engines(BuildConfig(bundle=bundle, precision="fp32"))
    prompts = ["a photo of a cat", "a red cube on a blue table"]
    with Pipeline.load(bundle, providers=["CPUExecutionProvider"]) as ort, Pipeline.load(bundle, backend="tensorrt") as trt:
        ref = ort(prompts, seed=3)
        first = trt(prompts, seed=3)
        replay = trt(prompts, seed=3)  # CUDA graph replay
        noise = trt.prepare(prompts, seed=3)[2]
        text = trt.encode_text(prompts)  # the stage interface check and bench use
        stage = trt.decode_latents(trt.decode_fused(trt.encode(noise, text), text, noise))
    assert compare_arrays(ref.images, first.images, data_range=255.0).psnr >= 35
    assert np.array_equal(first.images, replay.images)
    assert compare_arrays(first.images, stage, data_range=255.0).psnr >= 40

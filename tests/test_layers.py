"""The package's layers: sampling a trained run never loads training or the CLI, and imports point
downward with no cycles.

The static checks parse every module under ``src/difflab`` (ast, no imports executed). Each module
belongs to a *unit*: its top-level module or package (``difflab.eval.stats`` -> ``eval``; the
package root ``difflab`` is the unit ``difflab``). Every unit has a layer in :data:`LAYERS`, and a
module may import only from units on strictly lower layers (within one unit anything goes). Both
top-level and function-level imports count, for the layers and for the cycles; imports under
``if TYPE_CHECKING:`` do not (they never run). The few edges that may point the other way are
listed, with their reasons, in :data:`LAZY_REGISTRY` and :data:`TO_FIX`; each must stay
function-level, and an entry that no longer matches an import must be deleted.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Higher layers may import lower ones. Same number = peers, which must not import each other.
LAYERS: dict[str, int] = {
    # foundation: no difflab imports
    "config": 0,
    "device": 0,
    "noise": 0,
    "io": 0,  # atomic writes, safetensors weights, file digests
    # the maths of diffusion
    "schedules": 1,
    "diffusion": 2,
    "losses": 3,
    "samplers": 3,
    # data, pictures, networks, the sampling function
    "data": 3,
    "viz": 4,
    "nets": 4,  # basic_unet's corrupt objective uses losses
    "sampling": 4,
    "guidance": 4,  # classifier-free guidance around a denoiser
    "classifier_guidance": 4,  # classifier guidance around a denoiser (any classifier callable)
    "conditioning": 4,  # what a sample is conditioned on (class labels, ...)
    # what decides a run
    "run_config": 5,
    "classifier_run": 5,  # a noise-aware classifier's run: config, loading, pairing with a diffusion run
    "latent": 5,  # autoencoder + its stored scale factor (pixels <-> latents), a train-vae run's config
    "presets": 6,
    "interop": 6,  # diffusers export / import: scheduler configs, UNet conversion, pipeline folders
    # a trained model: load and sample (difflab.load)
    "pipeline": 7,
    # applications of a trained model: the public API, scoring
    "difflab": 8,  # the package root: difflab.load, difflab.sample, ...
    "eval": 8,
    "edit": 8,  # inpainting, img2img, inversion, interpolation with a trained run; nothing below imports it
    # training samples through pipeline and scores with eval's metrics (--eval-every);
    # eval never imports training
    "train": 9,
    # the web page: samples through pipeline, edits with edit, pictures with viz; a peer of train,
    # so serving can never import training (nor training the server)
    "serve": 9,
    "demo": 10,
    # the command line
    "cli": 11,
    "__main__": 12,
}

# (importer, imported): upward or cyclic edges that are fine because they are lazy lookups in a
# registry, made when a name is asked for (never at import time).
LAZY_REGISTRY: dict[tuple[str, str], str] = {
    ("difflab.eval.features", "difflab.eval.effnet"): "get_extractor builds an extractor on demand",
    ("difflab.eval.features", "difflab.eval.inception"): "get_extractor builds an extractor on demand",
    ("difflab.run_config", "difflab.presets"): "TrainConfig checks a preset name against PRESETS",
}

# (importer, imported): known wrong-way edges, each with its way out. Delete an entry when fixed.
TO_FIX: dict[tuple[str, str], str] = {
    ("difflab.data.images", "difflab.viz"): "to_uint8 belongs in data.images, for viz to import from there",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class Imports(ast.NodeVisitor):
    """The difflab modules a module imports: {imported: True if any import of it is top-level}."""

    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.modules = module, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: dict[str, bool] = {}
        self.depth = 0  # inside how many function bodies

    def add(self, name: str) -> None:
        if name.startswith("difflab") and name != self.module:
            self.found[name] = self.found.get(name, False) or self.depth == 0

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self.add(sub if sub in self.modules else base)


def import_graph() -> dict[str, dict[str, bool]]:
    """{module: {imported module: top-level?}} over src/difflab. Importing ``difflab.a.b`` from
    outside ``difflab.a`` also runs ``difflab.a/__init__``, so it counts as importing that too
    (the root ``difflab/__init__`` is left out: every import runs it, which the subprocess test
    keeps cheap)."""
    files = {module_name(p): p for p in sorted((SRC / "difflab").rglob("*.py"))}
    graph: dict[str, dict[str, bool]] = {}
    for module, path in files.items():
        visitor = Imports(module, path.name == "__init__.py", set(files))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges = dict(visitor.found)
        for target, top in visitor.found.items():
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in files and not module.startswith(parent + "."):
                    edges[parent] = edges.get(parent, False) or top
        graph[module] = {t: top for t, top in edges.items() if t != module}
    return graph


def counted(graph: dict[str, dict[str, bool]]) -> dict[str, set[str]]:
    """The edges the checks hold to: all but the listed exceptions."""
    allowed = LAZY_REGISTRY.keys() | TO_FIX.keys()
    return {m: {t for t in targets if (m, t) not in allowed} for m, targets in graph.items()}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted
    list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_find_cycles_finds_only_cycles():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "f": {"d"}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_parse_relative_function_level_and_type_checking(tmp_path):
    code = (
        "from typing import TYPE_CHECKING\n"
        "from difflab.data import Batcher\n"
        "from . import errors\n"
        "if TYPE_CHECKING:\n"
        "    from difflab.nets import UNet\n"
        "def f():\n"
        "    import difflab.viz\n"
    )
    modules = {"difflab.data", "difflab.data.errors", "difflab.data.batcher", "difflab.viz", "difflab.nets"}
    visitor = Imports("difflab.data.formats", False, modules)
    visitor.visit(ast.parse(code))
    assert visitor.found == {"difflab.data": True, "difflab.data.errors": True, "difflab.viz": False}


def test_every_unit_has_a_layer():
    units = {unit(m) for m in import_graph()}
    assert units - LAYERS.keys() == set(), "place the new units in LAYERS"


def test_no_import_cycles():
    cycles = find_cycles(counted(import_graph()))
    assert cycles == [], f"import cycles (top-level and function-level imports): {cycles}"


def test_imports_point_down_the_layers():
    wrong = sorted(
        f"{m} ({unit(m)}, layer {LAYERS[unit(m)]}) imports {t} ({unit(t)}, layer {LAYERS[unit(t)]})"
        for m, targets in counted(import_graph()).items()
        for t in targets
        if unit(m) != unit(t) and LAYERS[unit(m)] <= LAYERS[unit(t)]
    )
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("edge", sorted(LAZY_REGISTRY.keys() | TO_FIX.keys()), ids="->".join)
def test_listed_exceptions_exist_and_are_lazy(edge):
    importer, imported = edge
    graph = import_graph()
    assert imported in graph[importer], f"{importer} no longer imports {imported}: delete the entry"
    assert graph[importer][imported] is False, f"{importer} imports {imported} at import time"


LOAD_AND_SAMPLE = """
import json, sys
import difflab

def loaded(prefix):
    return sorted(m for m in sys.modules if m == prefix or m.startswith(prefix + "."))

report = {"import": loaded("difflab.train") + loaded("difflab.cli")}
pipe = difflab.load(sys.argv[1], device="cpu")
images = pipe.sample(2, steps=2, seed=0)
report["load_and_sample"] = loaded("difflab.train") + loaded("difflab.cli")
report["shape"] = list(images.shape)
print(json.dumps(report))
"""


def tiny_run(folder: Path) -> Path:
    """A run folder (config.json + model.safetensors) of an untrained tiny UNet, written without
    the training package."""
    from difflab.data import DataConfig
    from difflab.io import save_weights
    from difflab.nets import UNetConfig, build_net
    from difflab.run_config import TrainConfig

    net = UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4,
                     image_size=8)
    cfg = TrainConfig(data=DataConfig(source="digits", image_size=8, channels=1), net=net, T=20,
                      sample_steps=2)
    folder.mkdir()
    (folder / "config.json").write_text(cfg.to_json() + "\n")
    save_weights(build_net(net).state_dict(), folder / "model.safetensors")
    return folder


def test_import_and_load_and_sample_do_not_load_training_or_the_cli(tmp_path):
    run = tiny_run(tmp_path / "run")
    out = subprocess.run([sys.executable, "-c", LOAD_AND_SAMPLE, str(run)], capture_output=True,
                         text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"import": [], "load_and_sample": [], "shape": [2, 1, 8, 8]}

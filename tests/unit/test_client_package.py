"""The client package on its own terms: what it imports, the inputs it takes, the results it
writes, and what its command line prints."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xaiserve_client import Explanation, InvalidArgument
from xaiserve_client.builders import method_names, method_params
from xaiserve_client.cli import build_parser, main
from xaiserve_client.images import load_rgb, tensor_to_array, to_image_proto
from xaiserve_client.v1 import explain_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
SERVER_STACK = ("xaiserve", "torch", "onnxruntime", "onnx", "zennit", "captum", "scipy",
                "skimage", "sklearn", "matplotlib")  # fmt: skip


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return done.stdout


def test_client_commands_do_not_load_the_server_stack() -> None:
    """Even with the server installed, the SDK, the parser and an image conversion import
    none of it (``serve`` imports the server only when it runs)."""
    loaded = _python(
        "import sys, numpy as np\n"
        "import xaiserve_client, xaiserve_client.cli as cli, xaiserve_client.images as im\n"
        "cli.build_parser().parse_args(['predict', 'x.png'])\n"
        "im.to_image_proto(np.zeros((3, 8, 8), np.uint8))\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {SERVER_STACK!r}])\n"
    )
    assert loaded.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Image inputs


def _pixels(message: pb.Image) -> np.ndarray:
    return tensor_to_array(message.tensor)


def test_channels_first_arrays_are_images() -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    for variant in (chw, chw[None], hwc[None]):
        np.testing.assert_array_equal(_pixels(to_image_proto(variant)), hwc)
    gray = hwc[:, :, 0]
    np.testing.assert_array_equal(_pixels(to_image_proto(gray[None])), gray)
    # both readings fit (3, H, 3): the channels-last one wins
    ambiguous = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_pixels(to_image_proto(ambiguous)), ambiguous)
    np.testing.assert_array_equal(load_rgb(chw), hwc)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_image_proto(np.zeros((4, 5, 6), np.uint8))


def test_torch_tensors_are_images() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    hwc = rng.random((6, 5, 3), dtype=np.float32) * 255
    tensor = torch.tensor(hwc.transpose(2, 0, 1), requires_grad=True)  # (C, H, W), with grad
    np.testing.assert_array_equal(_pixels(to_image_proto(tensor)), hwc)
    np.testing.assert_array_equal(_pixels(to_image_proto(tensor[None].half())),
                                  hwc.astype(np.float16).astype(np.float32))  # fmt: skip
    as_uint8 = torch.from_numpy(hwc.astype(np.uint8))
    np.testing.assert_array_equal(_pixels(to_image_proto(as_uint8)), hwc.astype(np.uint8))


def test_images_never_import_torch() -> None:
    out = _python(
        "import sys, numpy as np\n"
        "from xaiserve_client.images import to_image_proto\n"
        "to_image_proto(np.zeros((3, 4, 4), np.float32))\n"
        "try:\n    to_image_proto(object())\nexcept TypeError as e:\n    print(e)\n"
        "print('torch' in sys.modules)\n"
    )
    message, loaded = out.strip().splitlines()
    assert "torch tensor" in message and loaded == "False"


# ---------------------------------------------------------------------------------------------
# Explanation results


def _explanation() -> Explanation:
    from xaiserve_client.images import array_to_tensor

    rng = np.random.default_rng(2)
    message = pb.ExplainResponse(
        heatmap=array_to_tensor(rng.standard_normal((4, 6)).astype(np.float32)),
        signed=True,
        target=pb.ClassScore(index=2, label="circle", probability=0.75),
        contrast=pb.ClassScore(index=1, label="square", probability=0.125),
        forward_passes=17,
        timings=pb.Timings(total_seconds=0.5, method_seconds=0.25),
        maps={"scale_1": array_to_tensor(rng.random((4, 6)).astype(np.float32))},
        values={"utility": 0.5},
        provenance=pb.Provenance(model="shapes", version="1", method="lrp", seed=7),
        method="lrp",
        request_id="r-1",
    )
    message.provenance.parameters.update({"epsilon": 0.25, "composite": "epsilon_plus"})
    return Explanation.from_proto(message)


def test_explanation_to_dict_and_json() -> None:
    e = _explanation()
    data = e.to_dict()
    assert json.loads(e.to_json()) == data  # plain JSON values all the way down
    assert np.array_equal(np.asarray(data["heatmap"], np.float32), e.heatmap)
    assert data["target"] == {"index": 2, "label": "circle", "probability": 0.75}
    assert data["maps"]["scale_1"] == e.maps["scale_1"].tolist()
    assert data["provenance"]["parameters"] == {"epsilon": 0.25, "composite": "epsilon_plus"}
    assert data["provenance"]["seed"] == 7 and data["timings"]["method"] == 0.25


def test_explanation_npz_round_trip(tmp_path: Path) -> None:
    e = _explanation()
    path = e.save_npz(tmp_path / "sub" / "lrp")
    assert path.name == "lrp.npz"
    back = Explanation.load_npz(path)
    np.testing.assert_array_equal(back.heatmap, e.heatmap)
    np.testing.assert_array_equal(back.maps["scale_1"], e.maps["scale_1"])
    assert back.to_dict() == e.to_dict()
    with np.load(path, allow_pickle=False) as data:  # numpy alone reads it
        assert json.loads(str(data["meta"]))["method"] == "lrp"


# ---------------------------------------------------------------------------------------------
# Command line


def test_mistyped_method_suggests_a_name() -> None:
    with pytest.raises(InvalidArgument, match="did you mean 'saliency'"):
        method_params("salency")
    with pytest.raises(InvalidArgument, match="did you mean 'integrated_gradients'"):
        method_params("integrated-gradients")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(["explain", "x.png", "--method", "lrpp"])
    assert exit_info.value.code == 2 and "did you mean 'lrp'" in err.getvalue()
    assert "did you mean" not in method_names()  # sanity: suggestions are not method names


def _help_texts() -> dict[str, str]:
    parser = build_parser()
    texts = {"xaiserve": parser.format_help()}
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, subparser in sub.choices.items():  # type: ignore[attr-defined]
        texts[name] = subparser.format_help()
    return texts


def test_help_texts_have_no_restructuredtext() -> None:
    texts = _help_texts()
    assert {"serve", "predict", "explain", "score", "compare", "evaluate"} <= set(texts)
    for name, text in texts.items():
        for markup in ("``", ":class:", ":func:", ":mod:", ":data:", ":meth:"):
            assert markup not in text, f"{name} --help shows {markup}"
        assert not any(line.rstrip().endswith("::") for line in text.splitlines()), name
    assert "xaiserve explain cat.png" in texts["xaiserve"]  # the examples survive


def test_plotting_without_matplotlib_names_the_extra() -> None:
    out = _python(
        "import sys\nsys.modules['matplotlib'] = None  # as if not installed\n"
        "import numpy as np\nfrom xaiserve_client.images import overlay, PlotExtraMissing\n"
        "try:\n    overlay(np.zeros((4, 4)), signed=True)\n"
        "except PlotExtraMissing as e:\n    print(e)\n"
    )
    assert "pip install 'xaiserve-client[plot]'" in out

"""GAD (Mazini Rodrigues et al.) on the demo shapes model, loaded as the server loads it.

A support set is fitted once (classes circle vs square, a small subset of the training split,
few epochs) and then:

- each support model reproduces its modified targets (Section 4.2): its MSE to them is far
  below the original model's, and the distanced outputs moved down by a good part of α;
- on held-out images of the two classes, for every base method of Table 1, the GAD hull is
  smaller than the original's (RC < 1, Eq. 1) for most images, and occluding it changes the
  target logit per pixel about as much as occluding the original hull (RS, Eq. 2; Table 2). The
  table is printed (``pytest -s``); see the module notes below for what does and does not hold;
- a new repository/model object (a restart) lists the finished set and explains with it;
- cancelling the ``fit_gad`` operation mid-fit leaves no half-written set;
- concurrent GAD requests give the sequential maps and leave no hooks on any module copy;
- end to end over a real gRPC server: FitGad → WatchOperation → Explain with ``gad``.

Notes on Table 2: with the paper's 50 % keep fraction on 64×64 images the original hull covers
most of the image, and mean RS(GAD) > RS(original) holds for some base methods only, by small
margins; the supplementary mask (M_Orig − M_GAD) is usually *more* sensitive per pixel than the
GAD mask here, unlike the paper's Table 2. The test asserts RS(GAD) ≥ 0.85 · RS(original) on
average (GAD's smaller region keeps the decision-relevant part) and reports the rest.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from xaiserve.config import Settings
from xaiserve.demo import shapes
from xaiserve.imaging.decode import ImageLimits
from xaiserve.jobs.datasets import DatasetItem
from xaiserve.jobs.fleet import Fleet
from xaiserve.jobs.gad_fitting import GadFitConfig, fit_support_set, modified_targets, run_gad_fit
from xaiserve.jobs.operations import OperationStore
from xaiserve.methods.base import Target
from xaiserve.methods.gad import GadParams, gad  # registers "gad"
from xaiserve.models.model import Model
from xaiserve.models.repository import ModelRepository
from xaiserve.models.support_models import load_support_set
from xaiserve.models.support_sets import SUPPORT_SETS_DIR, SupportSetRecord, SupportSetStore
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import ImageBudget
from xaiserve.runtime.torch_backend import leftover_hooks
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

torch.set_num_threads(1)

DEMO_MODELS = Path(__file__).resolve().parents[2] / "models"
CLASS_A, CLASS_B = 0, 1  # circle, square
TRAIN_PER_CLASS = 30
HELDOUT = 60  # the first 60 held-out images: 12 per class, 24 of the two classes
BASES = (
    "saliency",
    "deconvolution",
    "gradient_times_input",
    "guided_backprop",
    "integrated_gradients",
)
FIT = GadFitConfig(CLASS_A, CLASS_B, epochs=5, batch_size=8, learning_rate=1e-4, seed=0)
"""The paper's α schedule and Adam; lr 1e-4 and 5 epochs instead of 4e-5 and 10 because the
fitting set has 60 images, not thousands (about 40 optimiser steps per α)."""


def _repository(root: Path) -> ModelRepository:
    # Artifacts beside the repository: every repository over it sees the same support sets.
    settings = Settings(models_dir=str(root), artifacts=str(root.parent / "artifacts"))
    return ModelRepository(root, settings, Metrics(), ImageBudget(100_000))


def _load(root: Path) -> Model:
    entry = _repository(root).load_version("shapes", "1")
    assert entry.model is not None, entry.error
    return entry.model


@dataclass
class Fitted:
    root: Path
    model: Model
    record: SupportSetRecord
    images: np.ndarray
    labels: np.ndarray


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fitted]:
    root = tmp_path_factory.mktemp("gad") / "repo"
    shutil.copytree(DEMO_MODELS, root)
    model = _load(root)
    data = shapes.generate(TRAIN_PER_CLASS * len(shapes.CLASS_NAMES), shapes.TRAIN_SEED)
    images, labels = data.images.astype(np.float32), data.labels
    ops = OperationStore(None, Metrics())
    op = ops.start_local("fit_gad", lambda h: fit_support_set(model, images, labels, FIT, h).summary())
    done = ops.wait(op.id, 120)
    assert done.state == "SUCCEEDED", done.error_message
    assert done.result is not None
    record = SupportSetStore(model.artifact_folder).get(done.result["id"])
    print(
        f"\nGAD fit ({record.images} images, {FIT.epochs} epochs, {record.fit_seconds:.1f} s): "
        + ", ".join(
            f"α={a:g}: MSE {f:.3f} (original weights {i:.3f})"
            for a, f, i in zip(record.alphas, record.final_loss, record.initial_loss, strict=True)
        )
    )
    yield Fitted(root, model, record, images, labels)
    ops.shutdown()
    model.close()


def test_support_models_reproduce_their_modified_targets(fitted: Fitted) -> None:
    record = fitted.record
    assert record.alphas == [2.0, 4.0, 6.0, 8.0] and record.images == 2 * TRAIN_PER_CLASS
    keep = np.isin(fitted.labels, (CLASS_A, CLASS_B))
    images, labels = fitted.images[keep], fitted.labels[keep]
    loaded = load_support_set(fitted.model, record.id)
    original = fitted.model.predict(images, output="raw")
    is_a, is_b = labels == CLASS_A, labels == CLASS_B
    for support, final, initial in zip(
        loaded.supports, record.final_loss, record.initial_loss, strict=True
    ):
        alpha = support.alpha
        assert alpha is not None
        out = support.predict(images, output="raw")
        target = modified_targets(original, labels, CLASS_A, CLASS_B, alpha)
        mse = float(((out - target) ** 2).mean())
        assert mse == pytest.approx(final, rel=1e-3, abs=1e-4)  # stored figure = recomputed
        assert mse < 0.5 * initial  # far closer to the targets than the original model
        # the distanced outputs moved down by a good part of α (Section 4.1)
        shift = np.concatenate(
            [
                original[is_a, CLASS_B] - out[is_a, CLASS_B],
                original[is_b, CLASS_A] - out[is_b, CLASS_A],
            ]
        ).mean()
        assert shift > 0.4 * alpha, (alpha, shift)


def test_rc_and_rs_on_heldout_images(fitted: Fitted) -> None:
    """Tables 1–2 on our data: per base method, how often RC < 1, and mean RS per mask."""
    ho = shapes.heldout(HELDOUT)
    idx = [i for i in range(HELDOUT) if ho.labels[i] in (CLASS_A, CLASS_B)]
    lines = [f"{'base':22s} RC<1  mean RC  RS(GAD)  RS(orig)  RS(sup)  RS(GAD)>RS(orig)  (×10²)"]
    for base in BASES:
        rc, rs, rs_orig, rs_sup = [], [], [], []
        for i in idx:
            e = gad(
                fitted.model,
                ho.images[i].astype(np.float32),
                Target(int(ho.labels[i])),
                GadParams(support_set=fitted.record.id, base_method=base, steps=16),  # type: ignore[arg-type]
            )
            assert not (e.maps["hull"].astype(bool) & ~e.maps["hull_original"].astype(bool)).any()
            rc.append(e.values["rc"])
            rs.append(e.values.get("rs", 0.0))
            rs_orig.append(e.values["rs_original"])
            rs_sup.append(e.values.get("rs_supplementary", np.nan))
        rc_a, rs_a, orig_a = np.array(rc), np.array(rs), np.array(rs_orig)
        lines.append(
            f"{base:22s} {int((rc_a < 1).sum()):2d}/{len(idx)} {rc_a.mean():8.3f} "
            f"{rs_a.mean() * 100:8.4f} {orig_a.mean() * 100:9.4f} {np.nanmean(rs_sup) * 100:8.4f}"
            f"  {int((rs_a > orig_a).sum()):2d}/{len(idx)}"
        )
        assert (rc_a < 1).sum() >= 0.75 * len(idx), base  # Table 1: GAD's region is smaller
        assert (orig_a > 0).all() and rs_a.mean() >= 0.85 * orig_a.mean(), base
    print("\n" + "\n".join(lines))


def test_a_restart_lists_the_finished_set(fitted: Fitted) -> None:
    fresh = _load(fitted.root)  # a new repository and Model object over the same folder
    try:
        assert fitted.record.id in [r.id for r in SupportSetStore(fresh.artifact_folder).list_sets()]
        image = shapes.heldout(1).images[0].astype(np.float32)
        params = GadParams(support_set=fitted.record.id)
        again = gad(fresh, image, Target(CLASS_A), params)
        first = gad(fitted.model, image, Target(CLASS_A), params)
        np.testing.assert_allclose(again.heatmap, first.heatmap, rtol=1e-5, atol=1e-7)
    finally:
        fresh.close()


def test_cancelling_the_operation_mid_fit_leaves_no_half_written_set(fitted: Fitted) -> None:
    before = sorted(p.name for p in (fitted.model.artifact_folder / SUPPORT_SETS_DIR).iterdir())
    data = shapes.generate(20, shapes.TRAIN_SEED, start=1000)
    items = [
        DatasetItem(str(i), partial(np.asarray, img, np.float32), int(label), None)
        for i, (img, label) in enumerate(zip(data.images, data.labels, strict=True))
    ]
    config = GadFitConfig(CLASS_A, CLASS_B, alphas=(2.0, 4.0), epochs=50, batch_size=2)
    ops = OperationStore(None, Metrics())
    try:
        op = ops.start_local("fit_gad", lambda h: run_gad_fit(fitted.model, items, config, h))
        deadline = time.monotonic() + 60
        while ops.get(op.id).progress.get("alpha") != 4.0:  # α = 2 is written, α = 4 running
            assert time.monotonic() < deadline and ops.get(op.id).state == "RUNNING"
            time.sleep(0.02)
        ops.cancel(op.id)
        final = ops.wait(op.id, 30)
    finally:
        ops.shutdown()
    assert final.state == "CANCELLED" and final.result is None
    after = sorted(p.name for p in (fitted.model.artifact_folder / SUPPORT_SETS_DIR).iterdir())
    assert after == before
    assert fitted.record.id in [r.id for r in SupportSetStore(fitted.model.artifact_folder).list_sets()]


# gradients._quiet() uses warnings.catch_warnings, which is not thread-safe: under concurrency
# captum's "Setting backward hooks on ReLU" warning can slip through.
@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_concurrent_requests_match_sequential_and_leave_no_hooks(fitted: Fitted) -> None:
    ho = shapes.heldout(4)
    jobs = [
        (ho.images[i].astype(np.float32), Target(int(ho.labels[i]) % 2), base)
        for i in range(4)
        for base in ("guided_backprop", "deconvolution", "saliency")
    ]

    def run(job: tuple[np.ndarray, Target, str]) -> np.ndarray:
        image, target, base = job
        params = GadParams(support_set=fitted.record.id, base_method=base)  # type: ignore[arg-type]
        return gad(fitted.model, image, target, params).heatmap

    sequential = [run(j) for j in jobs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(run, jobs))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    loaded = load_support_set(fitted.model, fitted.record.id)
    for support in loaded.supports:
        assert support.pool.built_copies
        for module in support.pool.built_copies:
            assert leftover_hooks(module) == []


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_end_to_end_fit_watch_explain(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "repo"
    shutil.copytree(DEMO_MODELS, root)
    _server, port = start_server(root, log_level="WARNING")
    data = shapes.generate(20, shapes.TRAIN_SEED, start=2000)

    def stream() -> Iterator[pb.FitGadRequest]:
        yield pb.FitGadRequest(
            config=pb.FitGadConfig(
                model="shapes",
                class_a=pb.ClassRef(label="circle"),
                class_b=pb.ClassRef(label="square"),
                alphas=[2.0, 4.0],
                epochs=2,
                batch_size=4,
                learning_rate=1e-4,
                seed=3,
            )
        )
        for i, (img, label) in enumerate(zip(data.images, data.labels, strict=True)):
            yield pb.FitGadRequest(
                item=pb.LabelledImage(
                    image=pb.Image(encoded=_png(img)),
                    label=pb.ClassRef(index=int(label)),
                    name=f"img{i}",
                )
            )

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExplainServiceStub(channel)
        op = stub.FitGad(stream(), timeout=30)
        assert op.kind == "fit_gad" and op.total == 4
        seen = list(stub.WatchOperation(pb.OperationRequest(id=op.id), timeout=120))
        final = seen[-1]
        assert final.state == pb.Operation.SUCCEEDED, final.error.message
        assert {"alpha", "epoch", "loss"} <= set(final.progress)
        set_id = final.result["support_set"]
        assert set_id == "gad-0-1-1" and final.result["images"] == 8

        response = stub.Explain(
            pb.ExplainRequest(
                model="shapes",
                image=pb.Image(encoded=_png(shapes.heldout(1).images[0])),
                target=pb.ClassRef(label="circle"),
                method=pb.MethodParams(
                    gad=pb.GadParams(support_set=set_id, base_method="guided_backprop")
                ),
            ),
            timeout=60,
        )
        assert response.method == "gad" and not response.signed
        assert list(response.heatmap.shape) == [64, 64]
        assert {"original", "kept", "hull", "hull_original"} <= set(response.maps)
        assert 0 < response.values["rc"] <= 1 and response.values["rs_original"] > 0

        with pytest.raises(grpc.RpcError) as err:
            stub.Explain(
                pb.ExplainRequest(
                    model="shapes",
                    image=pb.Image(encoded=_png(shapes.heldout(1).images[0])),
                    method=pb.MethodParams(gad=pb.GadParams(support_set="gad-0-1-7")),
                ),
                timeout=30,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "gad-0-1-7" in str(
            err.value.details()
        )


def test_fit_gad_request_validation_and_server_side_folder(fitted: Fitted, tmp_path: Path) -> None:
    from xaiserve.api.servicer import ExplainServicer
    from xaiserve.errors import InvalidInput, NotFound

    shapes.save_folder(shapes.generate(10, shapes.TRAIN_SEED, start=3000), tmp_path / "ds")
    settings = Settings(
        models_dir=str(fitted.root),
        datasets_dir=str(tmp_path),
        artifacts=str(fitted.root.parent / "artifacts"),
        data_dir=str(tmp_path / "data"),
    )
    repo = ModelRepository(fitted.root, settings, Metrics(), ImageBudget(100_000))
    assert repo.load_version("shapes", "1").model is not None
    fleet = Fleet(settings, Metrics(), repo, ImageLimits())
    loaded = threading.Event()
    loaded.set()
    fleet.start(lambda: None, loaded)  # this process is a one-replica fleet: its workers fit
    assert fleet.ready.wait(30)
    ops = fleet.operations
    servicer = ExplainServicer(settings, repo, ops)

    def start_gad_fit(_: object, requests: Iterator[pb.FitGadRequest]) -> pb.Operation:
        return servicer.FitGad(requests, None)  # type: ignore[arg-type]

    def config(**kw: object) -> pb.FitGadRequest:
        base: dict[str, object] = dict(
            model="shapes", class_a=pb.ClassRef(index=0), class_b=pb.ClassRef(index=1)
        )
        base.update(kw)
        return pb.FitGadRequest(config=pb.FitGadConfig(**base))  # type: ignore[arg-type]

    try:
        with pytest.raises(InvalidInput, match="first FitGadRequest"):
            start_gad_fit(servicer, iter([]))
        with pytest.raises(InvalidInput, match="both 'circle'"):
            start_gad_fit(servicer, iter([config(class_b=pb.ClassRef(label="circle"))]))
        with pytest.raises(InvalidInput, match="must name classes"):
            start_gad_fit(servicer, iter([config(class_b=pb.ClassRef())]))
        with pytest.raises(InvalidInput, match="alphas"):
            start_gad_fit(servicer, iter([config(alphas=[2.0, 2.0], dataset="ds")]))
        with pytest.raises(NotFound, match="nope"):
            start_gad_fit(servicer, iter([config(dataset="nope")]))
        with pytest.raises(InvalidInput, match="both classes"):
            start_gad_fit(servicer, iter([config()]))  # no items at all
        op = start_gad_fit(servicer, iter([config(dataset="ds", alphas=[3.0], epochs=1)]))
        final = ops.wait(op.id, 60)
        assert final.state == "SUCCEEDED", final.error_message
        assert final.result is not None and final.result["images"] == 4  # 2 circles, 2 squares
        assert final.result["alphas"] == [3.0]
    finally:
        fleet.stop()
        repo.close()

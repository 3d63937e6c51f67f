"""Train the demo shapes classifier deterministically on CPU and export it as a model version.

Usage::

    python -m xaiserve.demo.train --out models/shapes/1

writes ``model.onnx`` (input ``input``: float32 NCHW ``(pixel/255 - mean) / std``; output
``logits``), ``config.toml`` (the server's model config) and ``training.json`` (seeds,
epochs, timings, held-out accuracy measured with onnxruntime on the exported file, SHA-256).

The exported graph is plain: the exporter folds every BatchNorm into the Conv before it,
leaving ``Conv, Relu, MaxPool, Add`` (one residual addition), ``GlobalAveragePool, Flatten,
Gemm``. Training takes about 1.5-3 minutes on 2 CPU cores.

Every run with the same arguments reproduces the same weights and the same ONNX bytes: the
data come from :mod:`xaiserve.demo.shapes` in a fixed order, the shuffling and the weight
initialisation from fixed seeds, and torch runs with deterministic algorithms on a fixed
number of CPU threads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

from xaiserve.demo import shapes

DESCRIPTION = "Synthetic coloured shapes on cluttered backgrounds (xaiserve demo)"
_RESIZE_COMMENT = "# stretch | center_crop  (how other-sized images are brought to height×width)"
_RANGE_COMMENT = "# pixel values 0..255 are mapped linearly onto this range before mean/std"


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines the trained weights."""

    torch_seed: int = 0
    data_seed: int = shapes.TRAIN_SEED
    train_images: int = 8000
    epochs: int = 6
    batch_size: int = 64
    lr: float = 4e-3
    warmup_fraction: float = 0.15
    weight_decay: float = 1e-4
    threads: int = 2
    heldout_n: int = 1000
    stats_n: int = 1000


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))``: the explicit addition is a graph ``Add``."""

    def __init__(self, channels: int) -> None:
        """Two 3x3 convolutions with ``channels`` in and out."""
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(x + y)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """Return a 3x3 convolution, batch norm and ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShapesNet(nn.Module):
    """Small CNN: 3 conv stages with max pooling, one residual block, global average pool."""

    def __init__(self, num_classes: int = len(shapes.CLASS_NAMES)) -> None:
        """Build the layers (about 80k parameters)."""
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(3, 16),
            nn.MaxPool2d(2),  # 32x32
            *_conv_bn_relu(16, 32),
            nn.MaxPool2d(2),  # 16x16
            ResidualBlock(32),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),  # 8x8
            *_conv_bn_relu(64, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for normalised NCHW input."""
        return self.classifier(self.flatten(self.pool(self.features(x))))


def set_determinism(threads: int) -> None:
    """Make torch CPU computation reproducible: deterministic kernels, fixed thread count."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def channel_stats(images: NDArray[np.uint8]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``images / 255``, rounded to 3 decimals."""
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 3) for v in x.mean(0)], [round(float(v), 3) for v in x.std(0)]


def normalise(
    images: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]
) -> NDArray[np.float32]:
    """``uint8 (N, H, W, 3)`` RGB → ``float32 (N, 3, H, W)`` ``(pixel/255 - mean) / std``."""
    scaled = images.astype(np.float32) / np.float32(255.0)
    x = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with the settings' learning rate and weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    """One optimisation step on a batch; returns the batch's cross-entropy loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Label-preserving random flips and 90° rotations (deterministic given ``generator``)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    if bool(torch.randint(0, 2, (1,), generator=generator)):
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k, dims=(2, 3))


def train(
    settings: TrainSettings, mean: Sequence[float], std: Sequence[float], log: bool = True
) -> tuple[ShapesNet, list[float]]:
    """Train a fresh :class:`ShapesNet` on the first ``train_images`` training samples.

    The images are generated once; every epoch visits them in a new seeded order, each batch
    under a random flip/rotation (the classes are invariant to both).

    Returns:
        The model in eval mode and the mean training loss of each epoch.
    """
    set_determinism(settings.threads)
    torch.manual_seed(settings.torch_seed)
    model = ShapesNet()
    optimizer = make_optimizer(model, settings)
    data = shapes.generate(settings.train_images, settings.data_seed)
    x_all = torch.from_numpy(normalise(data.images, mean, std))
    y_all = torch.from_numpy(data.labels)
    steps_per_epoch = len(data) // settings.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.lr,
        total_steps=steps_per_epoch * settings.epochs,
        pct_start=settings.warmup_fraction,
    )
    generator = torch.Generator().manual_seed(settings.torch_seed)
    losses: list[float] = []
    for epoch in range(settings.epochs):
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x = augment(x_all[idx], generator)
            total += train_step(model, optimizer, x, y_all[idx])
            scheduler.step()
        losses.append(total / steps_per_epoch)
        if log:
            print(f"epoch {epoch + 1}/{settings.epochs}: loss {losses[-1]:.4f}", flush=True)
    model.eval()
    return model, losses


def count_parameters(model: nn.Module) -> int:
    """Count the trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def export_onnx(model: nn.Module, path: Path, size: int = shapes.IMAGE_SIZE) -> None:
    """Export ``model`` (eval mode) to ONNX opset 17 with a dynamic batch axis."""
    model.eval()
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is wanted
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def onnx_accuracy(
    path: Path, dataset: shapes.ShapesDataset, mean: Sequence[float], std: Sequence[float]
) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on ``dataset``, run with onnxruntime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = normalise(dataset.images, mean, std)
    preds = [
        np.argmax(session.run(["logits"], {"input": x[i : i + 256]})[0], axis=1)
        for i in range(0, len(x), 256)
    ]
    return float((np.concatenate(preds) == dataset.labels).mean())


def _floats(values: Sequence[float]) -> str:
    """Format floats as a TOML array."""
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def config_toml(
    mean: Sequence[float], std: Sequence[float], labels: Sequence[str], size: int
) -> str:
    """Render the model version's ``config.toml`` in the format the server parses."""
    label_list = "[" + ", ".join(json.dumps(name) for name in labels) + "]"
    return f"""description = "{DESCRIPTION}"

[input]
name = "input"              # ONNX input name
height = {size}
width = {size}
layout = "NCHW"             # NCHW or NHWC
channel_order = "RGB"       # RGB or BGR
resize = "stretch"          {_RESIZE_COMMENT}
value_range = [0.0, 1.0]    {_RANGE_COMMENT}
{"mean = " + _floats(mean):<27} # per channel, in the model's channel order
std = {_floats(std)}

[output]
kind = "logits"             # logits | probabilities
labels = {label_list}

[batching]
max_batch_size = 64
max_queue_delay_ms = 2.0
"""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(out: Path, settings: TrainSettings) -> dict[str, object]:
    """Train, export and evaluate; write ``model.onnx``, ``config.toml`` and ``training.json``."""
    out.mkdir(parents=True, exist_ok=True)
    mean, std = channel_stats(shapes.generate(settings.stats_n, settings.data_seed).images)
    started = time.perf_counter()
    model, losses = train(settings, mean, std)
    train_seconds = time.perf_counter() - started
    model_path = out / "model.onnx"
    export_onnx(model, model_path)
    (out / "config.toml").write_text(
        config_toml(mean, std, shapes.CLASS_NAMES, shapes.IMAGE_SIZE), encoding="utf-8"
    )
    accuracy = onnx_accuracy(model_path, shapes.heldout(settings.heldout_n), mean, std)
    record: dict[str, object] = {
        "settings": asdict(settings),
        "train_seed": shapes.TRAIN_SEED,
        "heldout_seed": shapes.HELDOUT_SEED,
        "epochs": settings.epochs,
        "train_images": settings.train_images,
        "epoch_losses": [round(v, 5) for v in losses],
        "train_seconds": round(train_seconds, 1),
        "class_names": list(shapes.CLASS_NAMES),
        "mean": mean,
        "std": std,
        "parameters": count_parameters(model),
        "heldout_n": settings.heldout_n,
        "heldout_accuracy": accuracy,
        "onnx_bytes": model_path.stat().st_size,
        "onnx_sha256": sha256(model_path),
        "torch_version": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("models/shapes/1"))
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    parser.add_argument("--train-images", type=int, default=TrainSettings.train_images)
    args = parser.parse_args(argv)
    settings = TrainSettings(epochs=args.epochs, train_images=args.train_images)
    record = run(args.out, settings)
    print(
        f"held-out accuracy {record['heldout_accuracy']:.4f}, "
        f"{record['train_seconds']} s, {record['parameters']} parameters, "
        f"{record['onnx_bytes']} bytes -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

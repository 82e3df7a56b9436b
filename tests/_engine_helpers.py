"""Tiny model, dataset and task for engine tests (also run as a torchrun script by the DDP test)."""

from __future__ import annotations

import json
import sys

import torch
from torch import nn
from torch.utils.data import Dataset


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)
        self.glfuse_cfg = {"arch": "tiny_test_net", "model_args": {"num_classes": num_classes}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class Blobs(Dataset):
    """n images whose class is encoded in their brightness; random noise each access (tests RNG restore)."""

    def __init__(self, n: int = 24, num_classes: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % num_classes
        self.x = torch.randn(n, 1, 8, 8, generator=g) * 0.1 + self.y.view(-1, 1, 1, 1).float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i] + 0.01 * torch.randn(1, 8, 8), self.y[i], torch.tensor(i)


class TinyTask:
    def training_step(self, model, batch):
        x, y, _ = batch
        return nn.functional.cross_entropy(model(x), y)

    def predict_step(self, model, batch):
        x, y, i = batch
        return {"probs": model(x).softmax(-1), "target": y, "index": i}

    def compute_metrics(self, out):
        acc = (out["probs"].argmax(-1) == out["target"]).float().mean().item()
        return {"acc": acc, "n": float(len(out["target"]))}


if __name__ == "__main__":  # torchrun entry for the DDP test
    from glfuse.engine import TrainConfig, evaluate, fit

    run_dir, out_json = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model = TinyNet()
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0.5, progress=False, monitor="acc",
                      device="cpu")  # gloo on CPU, also on a CUDA machine
    summary = fit(model, TinyTask(), Blobs(22), Blobs(7, seed=1), cfg, run_dir)
    metrics, outputs = evaluate(model, TinyTask(), Blobs(7, seed=1), batch_size=2, progress=False)
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    rank = dist.get_rank()
    with open(f"{out_json}.{rank}", "w") as f:
        json.dump({"n": metrics["n"], "index": outputs["index"].tolist(), "checksum": flat.sum().item(),
                   "world": dist.get_world_size()}, f)
    dist.barrier()  # the last all_gather is finished on both ranks before either tears gloo down
    dist.destroy_process_group()

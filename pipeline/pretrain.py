"""MAKE's stage 1: pre-train the multimodal module on the CTR task, on every rank.

The stage-1 model is dense only (no embedding table), so it trains with DDP (gloo or NCCL)
over the same per-rank part of the training split as stage 2; its module is then copied
into the CTR model before sharding (`models.make.transfer_pretrained`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.features import FeatureSpec
from models.make import MAKEConfig, MAKEPretrainModel, make_pretrain_model
from pipeline.data import PreparedData
from pipeline.distributed import DistEnv

log = logging.getLogger(__name__)


def pretrain_make(
    spec: FeatureSpec,
    model_config: MAKEConfig,
    data: PreparedData,
    env: DistEnv,
    batch_size: int,
    lr: float,
    seed: int,
) -> MAKEPretrainModel:
    """Train `make_pretrain_model` for `model_config.pretrain_epochs` epochs; returns it.

    batch_size: rows per step on this rank (the trainer passes its per-rank batch, the
    global `--batch-size` divided by the world size).
    """
    torch.manual_seed(seed)
    model = make_pretrain_model(spec, model_config).to(env.device)
    trained: nn.Module = model
    if env.world_size > 1:
        trained = DistributedDataParallel(
            model, device_ids=[env.device] if env.device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    # A different data order than stage 2 (seed + 1), deterministic all the same.
    reader = data.reader(
        "train", batch_size, rank=env.rank, world_size=env.world_size, shuffle=True, seed=seed + 1
    )
    for epoch in range(model_config.pretrain_epochs):
        total, steps = 0.0, 0
        for batch in reader.iter_batches(epoch):
            batch = batch.to(env.device)
            loss = loss_fn(trained(batch), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss), steps + 1
        log.info("MAKE pre-training epoch %d: loss %.4f", epoch + 1, total / max(steps, 1))
    return model

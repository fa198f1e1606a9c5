"""One rank of the FSDP2 test: shard a tiny ParaRNN with torch's ``fully_shard`` (each
``ParaRNNBlock``, then the whole model, as accelerate's transformer wrap policy does), train a
few AdamW steps on this rank's half of a fixed batch, gather the full state dict and save it
with ``save_pretrained`` on rank 0. Run by ``torchrun --nproc_per_node 2``."""

import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from pararnn_hf import ParaRNNConfig, ParaRNNForCausalLM
from pararnn_hf.modeling.modeling_pararnn import ParaRNNBlock
from pararnn_hf.training.trainer import ShardingReportCallback

TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, intermediate_size=64, vocab_size=400)
STEPS, BATCH, LENGTH = 3, 4, 24


def build(cell: str) -> ParaRNNForCausalLM:
    torch.manual_seed(0)
    return ParaRNNForCausalLM(ParaRNNConfig(cell=cell, **TINY))


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, TINY["vocab_size"], (BATCH, LENGTH), generator=g) for _ in range(STEPS)]


def train(model, data, rank: int = 0, world: int = 1) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for batch in data:
        mine = batch.chunk(world)[rank]
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def main(out: str, cell: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = build(cell)
    for module in model.modules():
        if isinstance(module, ParaRNNBlock):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    report = ShardingReportCallback()
    args, state = SimpleNamespace(world_size=world), SimpleNamespace(is_world_process_zero=rank == 0)
    report.on_train_begin(args, state, None, model=model)
    losses = train(model, batches(), rank, world)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(out, state_dict=full)
    print(f"rank {rank} losses {losses}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

import torch
import torch.distributed as dist
from torch import nn

from gossip_nn import make_data_parallel

dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...
rank, world = dist.get_rank(), dist.get_world_size()

torch.manual_seed(0)  # the same initial model on every rank
net = nn.Linear(4, 1)
optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
model = make_data_parallel("sgp", net, optimizer)  # or "ar", "osgp", "dpsgd", "adpsgd"

gen = torch.Generator().manual_seed(rank)  # but each rank sees its own data
X = torch.randn(1024, 4, generator=gen)
y = X @ torch.tensor([[1.0], [-2.0], [3.0], [0.5]]) + 0.1 * torch.randn(1024, 1, generator=gen)
for step in range(101):
    batch = torch.randint(0, 1024, (32,), generator=gen)
    loss = nn.functional.mse_loss(model(X[batch]), y[batch])
    loss.backward()
    optimizer.step()  # SGP gossips here, in the optimizer's step hooks
    optimizer.zero_grad()
    if rank == 0 and step % 25 == 0:
        print(f"step {step:3d}  loss on rank 0: {loss.item():.4f}")

model.close()  # finish gossip and release the optimizer hooks
own = [torch.zeros(4) for _ in range(world)]
dist.all_gather(own, net.weight.detach().flatten())  # every rank's own weights
with torch.no_grad(), model.average_for_eval():  # the exact network average, on every rank
    if rank == 0:
        for r, w in enumerate(own):
            print(f"rank {r} weights  " + "  ".join(f"{v:+.4f}" for v in w))
        print("average weights " + "  ".join(f"{v:+.4f}" for v in net.weight.flatten()))
dist.barrier()
dist.destroy_process_group()

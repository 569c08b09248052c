import torch

# The suite runs many tiny models: one thread avoids OpenMP overhead and contention on small CI machines.
torch.set_num_threads(1)

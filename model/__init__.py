"""The model: the U-Net, the diffusion processes and their preconditioning, the samplers.
Pure math on tensors: nothing here reads files or knows the command line."""

"""Config of the model layer (no torch import, so configs load without it)."""

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Which open_clip model to build and which weights to load."""

    name: str = "ViT-B-32-quickgelu"
    # Local checkpoint path, or a hub repo id ("chendelong/RemoteCLIP"); empty = random init.
    pretrained: str = ""
    # File inside the hub repo; empty = "RemoteCLIP-<arch>.pt" derived from `name`.
    hub_filename: str = ""
    # Optional open_clip model-config JSON registered before building (tiny test models).
    config_file: str = ""
    # Replace nn.MultiheadAttention by q/k/v/out Linears + scaled_dot_product_attention.
    swap_attention: bool = True

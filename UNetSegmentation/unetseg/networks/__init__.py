"""The U-Net family: one module per variant and `build_network`, the factory that builds any of them."""

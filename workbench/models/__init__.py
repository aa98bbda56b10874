"""Architectures, one file each: a plain ``nn.Module`` network and the LightningModule around it."""

"""PyTorch interop: reading torch.save files without running their code
(`torch_format`), placing named PyTorch tensors into our variables (`assign`), and the
name maps of the authors' SegNet (`segnet`) and torchvision's resnet18 (`resnet`).
`mtpsl_tf.import_torch` is the command line importer of the authors' checkpoints.
"""

"""Benchmark this machine: ``python -m clipbench.bench`` (see :mod:`clipbench.bench.__main__`).

Encoders run with **random weights of the real architectures** (open_clip RN50, ViT-B-32,
ViT-B-16, torchvision resnet50, BERT-base): the FLOPs are those of the real weights, and no hub
access is needed. Every throughput is also given as a share of a peak measured in the same run,
and every comparison with a peer as a ratio within one run, since absolute numbers drift on
shared machines.
"""

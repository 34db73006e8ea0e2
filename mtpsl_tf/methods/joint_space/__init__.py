"""Joint-space baselines of the paper (supplement Tab. 3, 5-7): MTPSL's joint pairwise task
space (the FiLM-conditioned mapping net, its active (image, pair) items and its feature
regulariser) with the cosine alignment replaced by another objective.

Modules: `infonce` and `gan` (pure losses and the discriminator layer), `contrastive`
(`--method=contrastive`) and `discriminator` (`--method=discriminator`). See docs/BASELINES.md.
"""

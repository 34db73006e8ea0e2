"""The paper's cross-task mapping baselines (supplement Tab. 3, 5, 7, 9), after Zamir et al.
CVPR 2020: one whole SegNet per ordered task pair (`networks`), which pairs are active per
image (`pairs`), the direct and perceptual losses (`losses`), and the methods `direct_map`
(`direct`), `perceptual_map` (`perceptual`) and `xtask` (`xtask`). docs/BASELINES.md.
"""

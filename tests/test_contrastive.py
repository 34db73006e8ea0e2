"""--method=contrastive: InfoNCE on hand-made embeddings (numpy transcription), its negatives
mask, pooling, options, and a tiny end-to-end run under mixed_float16, the step under XLA."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mtpsl_tf.methods.joint_space.infonce import info_nce, negatives_mask, pool_embeddings
from tests_helpers import TINY, check_jit_step, tiny_config


def _numpy_info_nce(a, c, positive, allowed, tau):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    out = []
    for n in range(len(a)):
        logits = [a[n] @ c[m] / tau for m in range(len(c)) if allowed[n, m]]
        out.append(np.log(np.sum(np.exp(logits))) - a[n] @ c[positive[n]] / tau)
    return np.array(out)


def test_info_nce_three_images_two_dims():
    """3 images, 2-d embeddings: anchor n's positive is candidate n, the others negatives."""
    anchors = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 1.0]])
    candidates = np.array([[2.0, 0.5], [0.0, 1.0], [-0.5, -0.5]])
    positive = np.array([0, 1, 2])
    allowed = np.ones([3, 3], bool)
    got = info_nce(anchors, candidates, positive, allowed, 0.5).numpy()
    np.testing.assert_allclose(got, _numpy_info_nce(anchors, candidates, positive, allowed, 0.5), rtol=1e-6)
    # by hand for anchor 0: cos = [4/sqrt(17), 0, -1/sqrt(2)] / 0.5
    s = np.array([4 / np.sqrt(17), 0.0, -1 / np.sqrt(2)]) / 0.5
    assert got[0] == pytest.approx(np.log(np.exp(s).sum()) - s[0], rel=1e-6)


def test_info_nce_masked_candidates_do_not_count():
    anchors = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 1.0]])
    candidates = np.array([[2.0, 0.5], [0.0, 1.0], [-0.5, -0.5]])
    positive = np.array([0, 1, 2])
    allowed = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], bool)
    got = info_nce(anchors, candidates, positive, allowed, 0.1).numpy()
    np.testing.assert_allclose(got, _numpy_info_nce(anchors, candidates, positive, allowed, 0.1), rtol=1e-5,
                               atol=1e-6)
    assert got[1] == pytest.approx(0.0, abs=1e-6)  # no negative: -log(1)


def test_negatives_mask_excludes_own_image_other_pairs_and_padding():
    anchor_image, anchor_pair = np.array([0, 0, 1]), np.array([0, 2, 0])
    cand_image, cand_pair = np.array([0, 0, 1, 2, 3]), np.array([0, 2, 0, 0, 2])
    valid = np.array([1, 1, 1, 0, 1], np.float32)
    positive = np.array([0, 1, 2])
    got = negatives_mask(anchor_image, anchor_pair, cand_image, cand_pair, valid, positive, True).numpy()
    expected = np.zeros([3, 5], bool)
    for n in range(3):
        for m in range(5):
            expected[n, m] = (m == positive[n]) or (cand_image[m] != anchor_image[n] and valid[m] > 0
                                                    and cand_pair[m] == anchor_pair[n])
    np.testing.assert_array_equal(got, expected)
    any_pair = negatives_mask(anchor_image, anchor_pair, cand_image, cand_pair, valid, positive, False).numpy()
    assert any_pair[1, 2] and not got[1, 2]  # another image, another pair


def test_pooling():
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape([2, 2, 3, 4])
    np.testing.assert_allclose(pool_embeddings(x, "mean").numpy(), x.mean(axis=(1, 2)))
    np.testing.assert_allclose(pool_embeddings(x, "flatten").numpy(), x.reshape([2, -1]))
    with pytest.raises(ValueError, match="pooling"):
        pool_embeddings(x, "max")


def test_bad_option_names_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--temperature"):
        tiny_config(tmp_path, tmp_path / "m", flags=TINY + ["--method=contrastive", "--temperature=0"])
    with pytest.raises(ValueError, match="--contrastive_scope"):
        tiny_config(tmp_path, tmp_path / "m", flags=TINY + ["--method=contrastive", "--contrastive_scope=all"])


def test_contrastive_trains_under_mixed_float16(tmp_path):
    """train.py's path (run) end to end, with loss scaling (the smoke test of mixed precision)."""
    from mtpsl_tf.training.run import run

    model_dir = tmp_path / "run"
    run(tiny_config(tmp_path, model_dir, flags=TINY + [
        "--method=contrastive", "--epochs=1", "--precision=mixed_float16", "--width=32"]))
    train = json.loads((model_dir / "history.json").read_text())[0]["train"]
    assert train["contrastive"] > 0 and np.isfinite(train["total"])
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    assert any(n.startswith("optimizer_film/") for n in reader.get_variable_to_shape_map())


# Slow (~35 s of CI): `python benchmarks/train_step.py --method=contrastive` compiles the whole step
# with XLA (its default) at NYU-v2 size; `pytest -m slow` runs this one.
@pytest.mark.slow
def test_contrastive_step_compiles_under_xla(tmp_path):
    """The loss terms and the gradients of every variable group compile with jit_compile=True
    (one-label batch with an unlabelled image) and are finite."""
    check_jit_step(tmp_path, "contrastive", "contrastive")

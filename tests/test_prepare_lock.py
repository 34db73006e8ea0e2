"""Generated datasets are prepared under a lock, so runs started together do not collide."""

import fcntl
import os

from mtpsl_tf.data import pipeline


class FakeBuilder:
    """Stands in for a TFDS builder: `data_dir`, and `download_and_prepare` writing
    dataset_info.json after checking that nobody else could hold the lock meanwhile."""

    def __init__(self, data_dir, log):
        self.data_dir, self.log = data_dir, log

    def download_and_prepare(self):
        lock_path = os.path.join(os.path.dirname(self.data_dir), ".prepare.lock")
        with open(lock_path, "w") as other:  # a second open file description: flock conflicts
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.log.append("prepared without the lock")
            except BlockingIOError:
                self.log.append("prepared under the lock")
        os.makedirs(self.data_dir, exist_ok=True)
        with open(os.path.join(self.data_dir, "dataset_info.json"), "w") as f:
            f.write("{}")


def test_generation_holds_the_lock_and_uses_a_fresh_builder(tmp_path):
    data_dir = str(tmp_path / "mtpsl_synthetic" / "small" / "1.0.0")
    log, made = [], []

    def make():
        made.append(FakeBuilder(data_dir, log))
        return made[-1]

    first = FakeBuilder(data_dir, log)
    result = pipeline._prepare_generated(make, first)
    assert log == ["prepared under the lock"]
    assert result is made[0] and result is not first  # re-made after the wait
    assert os.path.isfile(os.path.join(data_dir, "dataset_info.json"))


def test_prepared_data_is_reused_without_locking(tmp_path):
    data_dir = tmp_path / "mtpsl_synthetic" / "small" / "1.0.0"
    data_dir.mkdir(parents=True)
    (data_dir / "dataset_info.json").write_text("{}")
    log = []
    builder = FakeBuilder(str(data_dir), log)
    assert pipeline._prepare_generated(lambda: FakeBuilder(str(data_dir), log), builder) is builder
    assert log == [] and not (data_dir.parent / ".prepare.lock").exists()
